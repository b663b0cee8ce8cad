"""The worker's gRPC servicer: parses requests, attaches to jobs, streams events.

It only translates between protobuf and the job registry; the work is in
`imagegw.worker.build`."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from imagegw.domain.errors import ImageGatewayError, InvalidRequest
from imagegw.domain.model import BuildEvent
from imagegw.rpc import convert
from imagegw.rpc.status import status_for
from imagegw.rpc.worker_auth import authorized
from imagegw.v1 import worker_service_pb2, worker_service_pb2_grpc
from imagegw.worker.jobs import JobRegistry

log = logging.getLogger(__name__)


def event_to_proto(event: BuildEvent) -> worker_service_pb2.BuildImageResponse:
    if event.result is not None:
        return worker_service_pb2.BuildImageResponse(result=convert.result_to_proto(event.result))
    if event.failure is not None:
        return worker_service_pb2.BuildImageResponse(
            failure=convert.failure_to_proto(event.failure))
    assert event.progress is not None
    return worker_service_pb2.BuildImageResponse(
        progress=convert.progress_to_proto(event.progress))


class WorkerServicer(worker_service_pb2_grpc.WorkerServiceServicer):
    def __init__(self, jobs: JobRegistry, token: str | None = None) -> None:
        self.jobs = jobs
        #: The site's gateway-worker secret (None: WorkerTLS authenticates the caller).
        self.token = token

    def BuildImage(  # noqa: N802 (gRPC method name)
        self, request: worker_service_pb2.BuildImageRequest, context: grpc.ServicerContext
    ) -> Iterator[worker_service_pb2.BuildImageResponse]:
        if self.token is not None and not authorized(context.invocation_metadata(), self.token):
            log.warning("refused a BuildImage call without the worker secret from %s",
                        context.peer())
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "this worker takes jobs only from its gateways: the call did not "
                          "carry the secret of WorkerTokenFile")
        try:
            if not request.job_id or not request.system or not request.reference:
                raise InvalidRequest("job_id, system and reference are required")
            job = convert.job_from_proto(request)
            running, started = self.jobs.start_or_attach(job)
        except ImageGatewayError as exc:
            context.abort(status_for(exc), str(exc))
        log.info("job %s %s (%s on %s)", job.job_id, "started" if started else "attached",
                 job.reference, job.system)
        for event in running.watch(alive=context.is_active):
            yield event_to_proto(event)
