"""The public GatewayService servicer: authenticate, parse, call the core, translate.

Every call is authenticated here (the `authentication` metadata, decoded by the
munged of the request's system) and the resulting `Caller` goes to the core,
which makes every authorisation decision. Every error from our tree becomes its
gRPC status (one table, imagegw.rpc.status) with the message and hint; anything
else is logged and becomes INTERNAL. State-changing calls are audited."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from imagegw.domain.config import Config
from imagegw.domain.errors import ImageGatewayError, InvalidRequest, Unauthenticated
from imagegw.domain.model import ImageState
from imagegw.gateway.api.convert import pull_to_job, status_to_image
from imagegw.gateway.auth import MungeDecoder, authenticate_with_payload, is_admin
from imagegw.gateway.core import audit
from imagegw.gateway.core.access import ANONYMOUS_CALLER, Caller
from imagegw.gateway.core.expiry import Expirer
from imagegw.gateway.core.imports import Importer, ImportHeader
from imagegw.gateway.core.logins import Logins
from imagegw.gateway.core.pulls import PullManager, PullRequest
from imagegw.gateway.core.views import ImageStatus, lookup_status
from imagegw.rpc import convert
from imagegw.rpc.status import status_for
from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import gateway_service_pb2_grpc

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
MAX_FIELD = 1024
MAX_ACL_ENTRIES = 256
#: Most bytes of one import chunk message (the proto says up to 4 MiB).
MAX_CHUNK = 4 * 1024 * 1024
#: Lookup answers kept for reuse at most (dropped all at once beyond).
MAX_SHARED_ANSWERS = 1024
_LOOPBACK_PEERS = ("ipv4:127.", "ipv6:[::1]", "unix:")


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


def _check_acl(user_acl: Any, group_acl: Any) -> None:
    if len(user_acl) + len(group_acl) > MAX_ACL_ENTRIES:
        raise InvalidRequest(f"at most {MAX_ACL_ENTRIES} users and groups in an ACL")


def _require_system(system: str) -> None:
    if not system:
        raise InvalidRequest("system is required", hint="pass the cluster name, e.g. --system")


def _secure_transport(context: grpc.ServicerContext) -> bool:
    """Loopback or TLS: where plain registry passwords may travel in a request."""
    # grpc gives every auth property as a list of values; types-grpcio says one bytes.
    properties: Mapping[str, list[bytes]] = context.auth_context()  # type: ignore[assignment]
    security = properties.get("transport_security_type", [])
    return b"ssl" in security or context.peer().startswith(_LOOPBACK_PEERS)


@dataclass(frozen=True)
class Services:
    """The core objects the servicer calls."""

    config: Config
    pulls: PullManager
    expirer: Expirer
    importer: Importer
    logins: Logins


class GatewayServicer(gateway_service_pb2_grpc.GatewayServiceServicer):
    def __init__(self, services: Services) -> None:
        self.config = services.config
        self.pulls = services.pulls
        self.expirer = services.expirer
        self.importer = services.importer
        self.logins = services.logins
        #: One MungeDecoder per socket path, shared by every call.
        self._decoders: dict[str, MungeDecoder] = {}
        #: Lookup answers of READY statuses: id(status) -> (status, answer).
        self._answers: dict[int, tuple[ImageStatus, pb.LookupImageResponse]] = {}

    # -- authentication ------------------------------------------------------------

    def _authenticate(self, context: grpc.ServicerContext, system: str
                      ) -> tuple[Caller, bytes]:
        platform = self.config.platform(system)
        identity, payload = authenticate_with_payload(
            context.invocation_metadata(), platform, self._decoders)
        if identity.is_anonymous:
            return ANONYMOUS_CALLER, b""
        admin_of = frozenset({system}) if is_admin(identity, platform) else frozenset()
        return Caller(uid=identity.uid, gid=identity.gid, user=identity.user,
                      groups=identity.groups, admin_of=admin_of), payload

    def _caller(self, context: grpc.ServicerContext, system: str) -> Caller:
        return self._authenticate(context, system)[0]

    def _caller_any_system(self, context: grpc.ServicerContext) -> Caller:
        """For calls that name no system: decoded by the one munged every system shares."""
        sockets = {p.munge_socket for p in self.config.platforms.values()}
        if len(sockets) == 1 and self.config.platforms:
            return self._caller(context, next(iter(self.config.platforms)))
        if any(key.lower() == "authentication" for key, _ in context.invocation_metadata()):
            raise Unauthenticated("the systems use different MUNGE keys: name the system "
                                  "so the credential can be checked", hint="pass --system")
        return ANONYMOUS_CALLER

    # -- pulls and lookups ---------------------------------------------------------------

    @streaming
    def PullImage(self, request: pb.PullImageRequest, context: grpc.ServicerContext  # noqa: N802
                  ) -> Iterator[pb.PullImageResponse]:
        _check_fields(system=request.system, reference=request.reference, type=request.type)
        _require_system(request.system)
        _check_acl(request.user_acl, request.group_acl)
        caller = self._caller(context, request.system)
        with audit.audited("pull", caller, system=request.system,
                           image=request.reference) as details:
            ticket = self.pulls.request_pull(PullRequest(
                system=request.system, reference=request.reference,
                image_type=request.type or "docker", force=request.force,
                user_acl=tuple(request.user_acl), group_acl=tuple(request.group_acl),
            ), caller)
            details.update(job=ticket.job_id, private=bool(ticket.key.acl_key),
                           outcome="fresh" if ticket.fresh else
                           "started" if ticket.started else "joined")
        if ticket.answer is not None:
            yield pb.PullImageResponse(image=status_to_image(ticket.answer))
            return
        if request.no_wait:
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
        caller = self._caller(context, request.system)
        status = self.pulls.lookup(request.system, request.type or "docker", request.reference,
                                   caller)
        return self._lookup_answer(status)

    def _lookup_answer(self, status: ImageStatus) -> pb.LookupImageResponse:
        """The answer for `status`. A READY status comes from the gateway's lookup cache, the
        same object for every lookup of that reference for up to a second: its answer is
        built once and shared (only serialized, never changed)."""
        cached = self._answers.get(id(status))
        if cached is not None and cached[0] is status:
            return cached[1]
        answer = pb.LookupImageResponse(image=status_to_image(status))
        if status.state == ImageState.READY:
            if len(self._answers) >= MAX_SHARED_ANSWERS:
                self._answers.clear()
            self._answers[id(status)] = (status, answer)
        return answer

    @unary
    def ListImages(self, request: pb.ListImagesRequest, context: grpc.ServicerContext  # noqa: N802
                   ) -> pb.ListImagesResponse:
        _require_system(request.system)
        caller = self._caller(context, request.system)
        state = _image_state(request.state)
        statuses, token = self.pulls.list_images(request.system, state, request.page_size,
                                                 request.page_token, caller)
        return pb.ListImagesResponse(images=[status_to_image(s) for s in statuses],
                                     next_page_token=token)

    @unary
    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext  # noqa: N802
                 ) -> pb.ListJobsResponse:
        caller = (self._caller(context, request.system) if request.system
                  else self._caller_any_system(context))
        return pb.ListJobsResponse(jobs=[pull_to_job(p) for p in
                                         self.pulls.list_jobs(request.system or None, caller)])

    # -- admin: expiry and import --------------------------------------------------------

    @unary
    def ExpireImage(self, request: pb.ExpireImageRequest, context: grpc.ServicerContext  # noqa: N802
                    ) -> pb.ExpireImageResponse:
        _check_fields(system=request.system, reference=request.reference, type=request.type)
        _require_system(request.system)
        caller = self._caller(context, request.system)
        with audit.audited("expire", caller, system=request.system,
                           image=request.reference) as details:
            expired = self.expirer.expire_image(request.system, request.type or "docker",
                                                request.reference, caller)
            details["image_ids"] = [image.image_id for image in expired]
        image = self.pulls.store.get_image(request.system, expired[0].image_id,
                                           expired[0].acl_key) or expired[0]
        status = lookup_status(None, image, reference=request.reference, system=request.system,
                               expiration=self.config.image_expiration_timeout)
        return pb.ExpireImageResponse(image=status_to_image(status))

    @unary
    def ExpireUnusedImages(self, request: pb.ExpireUnusedImagesRequest,  # noqa: N802
                           context: grpc.ServicerContext) -> pb.ExpireUnusedImagesResponse:
        _require_system(request.system)
        caller = self._caller(context, request.system)
        with audit.audited("expire-unused", caller, system=request.system) as details:
            expired = self.expirer.expire_unused(request.system, caller)
            details["image_ids"] = [image.image_id for image in expired]
        return pb.ExpireUnusedImagesResponse(image_ids=[image.image_id for image in expired])

    @unary
    def ImportImage(self, request_iterator: Iterator[pb.ImportImageRequest],  # noqa: N802
                    context: grpc.ServicerContext) -> pb.ImportImageResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidRequest("an import starts with a header message",
                                 hint="send ImportHeader, then the image in chunks")
        message = first.header
        _check_fields(system=message.system, tag=message.tag, format=message.format,
                      sha256=message.sha256)
        _require_system(message.system)
        _check_acl(message.user_acl, message.group_acl)
        caller = self._caller(context, message.system)
        header = ImportHeader(
            system=message.system, tag=message.tag, format=message.format,
            size_bytes=message.size_bytes, sha256=message.sha256.lower(),
            metadata=convert.metadata_from_proto(message.metadata),
            user_acl=tuple(message.user_acl), group_acl=tuple(message.group_acl))
        with audit.audited("import", caller, system=message.system,
                           image=f"import/{message.tag}") as details:
            self.importer.check_header(header, caller)  # refuse before any bytes are read
            status = self.importer.import_image(header, _chunks(request_iterator), caller)
            details.update(image_id=status.image.image_id if status.image else "",
                           size=header.size_bytes, private=bool(status.pull and
                                                                 status.pull.key.acl_key))
        return pb.ImportImageResponse(image=status_to_image(status))

    # -- registry credentials ------------------------------------------------------------

    @unary
    def Login(self, request: pb.LoginRequest, context: grpc.ServicerContext  # noqa: N802
              ) -> pb.LoginResponse:
        _check_fields(system=request.system, registry=request.registry)
        _require_system(request.system)
        caller, payload = self._authenticate(context, request.system)
        username, password = request.username, request.password
        if payload:
            username, password = _sealed_credentials(payload)
        elif password and not _secure_transport(context):
            raise InvalidRequest(
                "refusing a registry password sent in the clear over a network connection",
                hint="log in where munge works (the password then travels sealed), or "
                     "connect over TLS")
        with audit.audited("login", caller, system=request.system, registry=request.registry,
                           registry_user=username, sealed=bool(payload)):
            message = self.logins.login(caller, request.registry, username, password)
        return pb.LoginResponse(registry=request.registry, username=username, message=message)

    @unary
    def Logout(self, request: pb.LogoutRequest, context: grpc.ServicerContext  # noqa: N802
               ) -> pb.LogoutResponse:
        _check_fields(system=request.system, registry=request.registry)
        _require_system(request.system)
        caller = self._caller(context, request.system)
        with audit.audited("logout", caller, system=request.system,
                           registry=request.registry) as details:
            removed = self.logins.logout(caller, request.registry)
            details["removed"] = removed
        return pb.LogoutResponse(removed=removed)


def _image_state(number: int) -> ImageState | None:
    """The state filter of ListImages: 0 for any state, else a known ImageState."""
    if not number:
        return None
    try:
        return ImageState(number)
    except ValueError:
        known = ", ".join(f"{state.value} ({state.name})" for state in ImageState if state)
        raise InvalidRequest(f"unknown image state {number}", hint=f"one of {known}") from None


def _chunks(requests: Iterator[pb.ImportImageRequest]) -> Iterator[bytes]:
    for request in requests:
        if request.WhichOneof("part") != "chunk":
            raise InvalidRequest("an import has one header, then only chunks")
        if len(request.chunk) > MAX_CHUNK:
            raise InvalidRequest(f"import chunks are at most {MAX_CHUNK} bytes")
        yield request.chunk


def _sealed_credentials(payload: bytes) -> tuple[str, str]:
    """(username, password) from the JSON sealed in the MUNGE credential."""
    try:
        data = json.loads(payload)
        username, password = data["username"], data["password"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest('the MUNGE payload must be JSON {"username": ..., '
                             '"password": ...}') from exc
    if not isinstance(username, str) or not isinstance(password, str):
        raise InvalidRequest("username and password in the MUNGE payload must be strings")
    return username, password
