"""The public GatewayService servicer: parse, call the core, translate.

Every error from our tree becomes its gRPC status (one table, imagegw.grpc_status)
with the message and hint; anything else is logged and becomes INTERNAL."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from imagegw.errors import ImageGatewayError, InvalidRequest
from imagegw.gateway.api.convert import pull_to_job, status_to_image
from imagegw.gateway.core.pulls import PullManager, PullRequest
from imagegw.grpc_status import status_for
from imagegw.model import ImageState
from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import gateway_service_pb2_grpc

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
MAX_FIELD = 1024


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    if isinstance(exc, ImageGatewayError):
        context.abort(status_for(exc), str(exc))
    log.exception("unexpected error")
    context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")


def unary(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except Exception as exc:  # translated in one place
            _abort(context, exc)
    return wrapper  # type: ignore[return-value]


def streaming(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            yield from method(self, request, context)
        except Exception as exc:
            _abort(context, exc)
    return wrapper  # type: ignore[return-value]


def _check_fields(**fields: str) -> None:
    for name, value in fields.items():
        if len(value) > MAX_FIELD:
            raise InvalidRequest(f"{name} is longer than {MAX_FIELD} characters")


def _require_system(system: str) -> None:
    if not system:
        raise InvalidRequest("system is required", hint="pass the cluster name, e.g. --system")


class GatewayServicer(gateway_service_pb2_grpc.GatewayServiceServicer):
    def __init__(self, pulls: PullManager) -> None:
        self.pulls = pulls

    @streaming
    def PullImage(self, request: pb.PullImageRequest, context: grpc.ServicerContext  # noqa: N802
                  ) -> Iterator[pb.PullImageResponse]:
        _check_fields(system=request.system, reference=request.reference, type=request.type)
        _require_system(request.system)
        ticket = self.pulls.request_pull(PullRequest(
            system=request.system, reference=request.reference,
            image_type=request.type or "docker", force=request.force,
            user_acl=tuple(request.user_acl), group_acl=tuple(request.group_acl),
        ))
        if request.no_wait or ticket.fresh:
            status = self.pulls.status(ticket.key)
            yield pb.PullImageResponse(image=status_to_image(status))
            return
        for status in self.pulls.watch(ticket, alive=context.is_active):
            response = pb.PullImageResponse(image=status_to_image(status))
            if status.progress is not None and status.state.in_flight:
                response.progress.CopyFrom(response.image.progress)
            yield response

    @unary
    def LookupImage(self, request: pb.LookupImageRequest, context: grpc.ServicerContext  # noqa: N802
                    ) -> pb.LookupImageResponse:
        _check_fields(system=request.system, reference=request.reference, type=request.type)
        _require_system(request.system)
        status = self.pulls.lookup(request.system, request.type or "docker", request.reference)
        return pb.LookupImageResponse(image=status_to_image(status))

    @unary
    def ListImages(self, request: pb.ListImagesRequest, context: grpc.ServicerContext  # noqa: N802
                   ) -> pb.ListImagesResponse:
        _require_system(request.system)
        state = ImageState(request.state) if request.state else None
        statuses, token = self.pulls.list_images(request.system, state, request.page_size,
                                                 request.page_token)
        return pb.ListImagesResponse(images=[status_to_image(s) for s in statuses],
                                     next_page_token=token)

    @unary
    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext  # noqa: N802
                 ) -> pb.ListJobsResponse:
        return pb.ListJobsResponse(jobs=[pull_to_job(p) for p in
                                         self.pulls.list_jobs(request.system or None)])
