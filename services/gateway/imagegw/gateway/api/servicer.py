"""The public GatewayService's translation: authenticate, parse, call the core, answer.

Every call is authenticated here (the `authentication` metadata, decoded by the
munged of the request's system) and the resulting `Caller` goes to the core,
which makes every authorisation decision; the caller's fair-share charge is made
as soon as they are known. These methods block (records, MUNGE, registries): the
asynchronous edge (`imagegw.gateway.api.edge`) runs them on its bounded thread
pools with a `CallContext` captured from the call, and turns every error from our
tree into its gRPC status (one table, imagegw.rpc.status). State-changing calls
are audited."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imagegw.domain.config import Config
from imagegw.domain.errors import InvalidRequest, Unauthenticated
from imagegw.domain.model import ImageState
from imagegw.gateway.api.convert import pull_to_job, status_to_image
from imagegw.gateway.auth import METADATA_KEY, MungeDecoder
from imagegw.gateway.core import audit
from imagegw.gateway.core.access import ANONYMOUS_CALLER, Caller
from imagegw.gateway.core.callers import authenticate_caller
from imagegw.gateway.core.expiry import Expirer
from imagegw.gateway.core.fairshare import Admission
from imagegw.gateway.core.imports import Importer, ImportHeader
from imagegw.gateway.core.logins import Logins
from imagegw.gateway.core.pulls import PullManager, PullRequest, PullTicket
from imagegw.gateway.core.views import ImageStatus, lookup_status
from imagegw.rpc import convert
from imagegw.v1 import gateway_service_pb2 as pb

log = logging.getLogger(__name__)

MAX_FIELD = 1024
MAX_ACL_ENTRIES = 256
#: Most bytes of one import chunk message (the proto says up to 4 MiB).
MAX_CHUNK = 4 * 1024 * 1024
#: Lookup answers kept for reuse at most (dropped all at once beyond).
MAX_SHARED_ANSWERS = 1024
_LOOPBACK_PEERS = ("ipv4:127.", "ipv6:[::1]", "unix:")


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


def _carries_credential(metadata: Sequence[tuple[str, Any]]) -> bool:
    return any(key.lower() == METADATA_KEY for key, _ in metadata)


@dataclass(frozen=True)
class CallContext:
    """What the methods need of a call, read from it on the event loop: its metadata,
    peer and transport security, and the fair-share `admission` to charge."""

    metadata: Sequence[tuple[str, Any]]
    peer_address: str
    auth: Mapping[str, Iterable[bytes]]
    admission: Admission

    def invocation_metadata(self) -> Sequence[tuple[str, Any]]:
        return self.metadata

    def peer(self) -> str:
        return self.peer_address

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return self.auth


def _secure_transport(context: CallContext) -> bool:
    """Loopback or TLS: where plain registry passwords may travel in a request."""
    security = list(context.auth_context().get("transport_security_type", []))
    return b"ssl" in security or context.peer().startswith(_LOOPBACK_PEERS)


@dataclass(frozen=True)
class Services:
    """The core objects the servicer calls."""

    config: Config
    pulls: PullManager
    expirer: Expirer
    importer: Importer
    logins: Logins


class GatewayServicer:
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

    def _authenticate(self, context: CallContext, system: str
                      ) -> tuple[Caller, bytes]:
        return authenticate_caller(context.invocation_metadata(), system,
                                   self.config.platform(system), self._decoders,
                                   context.admission)

    def _caller(self, context: CallContext, system: str) -> Caller:
        return self._authenticate(context, system)[0]

    def _caller_any_system(self, context: CallContext) -> Caller:
        """For calls that name no system: decoded by the one munged every system shares."""
        sockets = {p.munge_socket for p in self.config.platforms.values()}
        if len(sockets) == 1 and self.config.platforms:
            return self._caller(context, next(iter(self.config.platforms)))
        if any(key.lower() == "authentication" for key, _ in context.invocation_metadata()):
            raise Unauthenticated("the systems use different MUNGE keys: name the system "
                                  "so the credential can be checked", hint="pass --system")
        return ANONYMOUS_CALLER

    # -- pulls and lookups ---------------------------------------------------------------

    def begin_pull(self, request: pb.PullImageRequest, context: CallContext) -> PullTicket:
        """Starts or joins the pull (PullImage before any answer is streamed)."""
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
        return ticket

    @staticmethod
    def pull_response(status: ImageStatus) -> pb.PullImageResponse:
        """One message of a PullImage stream: the image, and its progress while in flight."""
        response = pb.PullImageResponse(image=status_to_image(status))
        if status.progress is not None and status.state.in_flight:
            response.progress.CopyFrom(response.image.progress)
        return response

    def LookupImage(self, request: pb.LookupImageRequest, context: CallContext  # noqa: N802
                    ) -> pb.LookupImageResponse:
        _check_fields(system=request.system, reference=request.reference, type=request.type)
        _require_system(request.system)
        caller = self._caller(context, request.system)
        status = self.pulls.lookup(request.system, request.type or "docker", request.reference,
                                   caller)
        return self._lookup_answer(status)

    def cached_lookup(self, request: pb.LookupImageRequest,
                      metadata: Sequence[tuple[str, Any]]) -> pb.LookupImageResponse | None:
        """LookupImage's answer when the lookup cache holds it and the call carries no
        credential (its caller is anonymous without asking munged), else None: dictionary
        reads only, so the asynchronous edge answers it on its loop, with no thread hop.
        A call with a credential, or a miss, is LookupImage's, on a pool thread."""
        if _carries_credential(metadata):
            return None
        _check_fields(system=request.system, reference=request.reference, type=request.type)
        _require_system(request.system)
        status = self.pulls.cached_lookup(request.system, request.type or "docker",
                                          request.reference, ANONYMOUS_CALLER)
        return None if status is None else self._lookup_answer(status)

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

    def ListImages(self, request: pb.ListImagesRequest, context: CallContext  # noqa: N802
                   ) -> pb.ListImagesResponse:
        _require_system(request.system)
        caller = self._caller(context, request.system)
        state = _image_state(request.state)
        statuses, token = self.pulls.list_images(request.system, state, request.page_size,
                                                 request.page_token, caller)
        return pb.ListImagesResponse(images=[status_to_image(s) for s in statuses],
                                     next_page_token=token)

    def ListJobs(self, request: pb.ListJobsRequest, context: CallContext  # noqa: N802
                 ) -> pb.ListJobsResponse:
        caller = (self._caller(context, request.system) if request.system
                  else self._caller_any_system(context))
        return pb.ListJobsResponse(jobs=[pull_to_job(p) for p in
                                         self.pulls.list_jobs(request.system or None, caller)])

    # -- admin: expiry and import --------------------------------------------------------

    def ExpireImage(self, request: pb.ExpireImageRequest, context: CallContext  # noqa: N802
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

    def ExpireUnusedImages(self, request: pb.ExpireUnusedImagesRequest,  # noqa: N802
                           context: CallContext) -> pb.ExpireUnusedImagesResponse:
        _require_system(request.system)
        caller = self._caller(context, request.system)
        with audit.audited("expire-unused", caller, system=request.system) as details:
            expired = self.expirer.expire_unused(request.system, caller)
            details["image_ids"] = [image.image_id for image in expired]
        return pb.ExpireUnusedImagesResponse(image_ids=[image.image_id for image in expired])

    def ImportImage(self, request_iterator: Iterator[pb.ImportImageRequest],  # noqa: N802
                    context: CallContext) -> pb.ImportImageResponse:
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

    def Login(self, request: pb.LoginRequest, context: CallContext  # noqa: N802
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

    def Logout(self, request: pb.LogoutRequest, context: CallContext  # noqa: N802
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
