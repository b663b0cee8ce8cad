"""`GatewayClient`: the blocking SDK over imagegw.v1.GatewayService.

It owns one channel per gateway address (TLS when given a CA certificate), tries
the addresses in turn when one is UNAVAILABLE (starting with the last one that
answered), attaches a fresh credential to every attempt, and turns protos and gRPC
errors into plain data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc

from imagegw.client.errors import GatewayError, PullFailed, Unavailable, error_from_rpc
from imagegw.client.models import (
    ImageInfo,
    JobInfo,
    PullUpdate,
    image_from_proto,
    image_state_value,
    job_from_proto,
    update_from_proto,
)
from imagegw.v1 import gateway_service_pb2 as gw_pb2
from imagegw.v1 import gateway_service_pb2_grpc as gw_grpc
from imagegw.v1 import image_pb2

logger = logging.getLogger(__name__)

#: gRPC metadata key carrying the caller's MUNGE credential.
AUTH_METADATA_KEY = "authentication"
DEFAULT_TIMEOUT = 30.0
#: How long a waiting pull may stream before the client gives up.
DEFAULT_PULL_TIMEOUT = 3600.0
_LIST_PAGE_SIZE = 100
#: Times a pull whose gateway was lost mid-stream is joined again (through any gateway).
PULL_REJOINS = 5
#: Bytes per ImportImage chunk message (the gateway takes up to 4 MiB).
IMPORT_CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class LoginResult:
    registry: str
    username: str
    #: What the gateway says, e.g. "credentials accepted by registry.example.org:443".
    message: str
    #: Whether the password travelled sealed in a MUNGE credential.
    sealed: bool


class GatewayClient:
    """A client for one site's gateways. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        credential_provider: Callable[[], str | None] | None = None,
        pull_timeout: float = DEFAULT_PULL_TIMEOUT,
        ca_cert: str | bytes | None = None,
        sealer: Callable[[bytes], str | None] | None = None,
    ) -> None:
        """`ca_cert` (a PEM file path or PEM bytes) makes every channel TLS, verified
        against it; `sealer` makes a MUNGE credential carrying a payload (for login)."""
        if isinstance(addresses, str):
            addresses = [addresses]
        self._addresses = [a.strip() for a in addresses if a.strip()]
        if not self._addresses:
            raise ValueError("GatewayClient needs at least one gateway address (host:port)")
        self._timeout = timeout
        self._pull_timeout = pull_timeout
        self._credential_provider = credential_provider
        self._sealer = sealer
        self._tls: grpc.ChannelCredentials | None = None
        if ca_cert is not None:
            roots = ca_cert if isinstance(ca_cert, bytes) else _read_file(ca_cert)
            self._tls = grpc.ssl_channel_credentials(root_certificates=roots)
        self._channels: dict[str, grpc.Channel] = {}
        self._preferred = 0

    # -- the API -------------------------------------------------------------

    def pull(
        self,
        system: str,
        reference: str,
        *,
        type: str = "docker",
        no_wait: bool = False,
        force: bool = False,
        user_acl: Iterable[int] = (),
        group_acl: Iterable[int] = (),
    ) -> Iterator[PullUpdate]:
        """Starts (or joins) a pull and yields the gateway's updates until it ends.

        The call is made when iteration starts; with `no_wait` one update comes back."""
        request = gw_pb2.PullImageRequest(
            system=system, type=type, reference=reference, no_wait=no_wait, force=force,
            user_acl=list(user_acl), group_acl=list(group_acl),
        )
        timeout = self._timeout if no_wait else self._pull_timeout
        return self._stream_pull(request, timeout)

    def pull_and_wait(
        self,
        system: str,
        reference: str,
        *,
        type: str = "docker",
        force: bool = False,
        user_acl: Iterable[int] = (),
        group_acl: Iterable[int] = (),
        on_update: Callable[[PullUpdate], None] | None = None,
    ) -> ImageInfo:
        """Pulls until the image is READY and returns it; raises `PullFailed` on FAILED."""
        last: PullUpdate | None = None
        for update in self.pull(system, reference, type=type, force=force,
                                user_acl=user_acl, group_acl=group_acl):
            if on_update is not None:
                on_update(update)
            last = update
        return ready_image(last)

    def lookup(self, system: str, reference: str, *, type: str = "docker") -> ImageInfo:
        """The image a reference points at on a system; `NotFound` when there is none."""
        request = gw_pb2.LookupImageRequest(system=system, type=type, reference=reference)
        return image_from_proto(self._unary("LookupImage", request).image)

    def lookup_id(self, system: str, image_id: str) -> ImageInfo:
        """The image with this id on a system; `NotFound` when there is none."""
        return self.lookup(system, image_id, type="id")

    def list_images(self, system: str, *, state: str | None = None) -> Iterator[ImageInfo]:
        """A system's images, newest pull first, fetching further pages as needed."""
        state_value = image_state_value(state) if state else image_pb2.IMAGE_STATE_UNSPECIFIED
        token = ""
        while True:
            request = gw_pb2.ListImagesRequest(
                system=system, state=state_value, page_size=_LIST_PAGE_SIZE, page_token=token
            )
            response = self._unary("ListImages", request)
            for image in response.images:
                yield image_from_proto(image)
            token = response.next_page_token
            if not token:
                return

    def list_jobs(self, system: str | None = None) -> list[JobInfo]:
        """Jobs waiting, running or recently finished; all systems when `system` is None."""
        response = self._unary("ListJobs", gw_pb2.ListJobsRequest(system=system or ""))
        return [job_from_proto(job) for job in response.jobs]

    def login(self, system: str, registry: str, username: str, password: str) -> LoginResult:
        """Checks registry credentials through the gateway, which keeps them for this
        user's pulls. The password travels sealed in a MUNGE credential when a sealer
        is configured, else in the request (the gateway accepts that only over TLS or
        loopback)."""
        payload = json.dumps({"username": username, "password": password}).encode()
        first = self._sealer(payload) if self._sealer is not None else None
        if first:
            unused = [first]  # one credential per attempt: MUNGE refuses replays

            def sealed_metadata() -> tuple[tuple[str, str], ...]:
                return self._sealed_metadata(payload, unused.pop() if unused else None)

            request = gw_pb2.LoginRequest(system=system, registry=registry)
            response = self._unary("Login", request, metadata=sealed_metadata)
            sealed = True
        else:
            request = gw_pb2.LoginRequest(system=system, registry=registry, username=username,
                                          password=password)
            response = self._unary("Login", request)
            sealed = False
        return LoginResult(response.registry, response.username, response.message, sealed)

    def logout(self, system: str, registry: str) -> bool:
        """Makes the gateway forget this user's credentials; False when there were none."""
        request = gw_pb2.LogoutRequest(system=system, registry=registry)
        return bool(self._unary("Logout", request).removed)

    def expire_image(self, system: str, reference: str, *, type: str = "docker") -> ImageInfo:
        """Expires an image now (admins only)."""
        request = gw_pb2.ExpireImageRequest(system=system, type=type, reference=reference)
        return image_from_proto(self._unary("ExpireImage", request).image)

    def expire_unused(self, system: str) -> list[str]:
        """Runs auto-expiry on a system now (admins only); returns the expired ids."""
        request = gw_pb2.ExpireUnusedImagesRequest(system=system)
        return list(self._unary("ExpireUnusedImages", request).image_ids)

    def import_image(
        self,
        system: str,
        tag: str,
        path: str | os.PathLike[str],
        *,
        user_acl: Iterable[int] = (),
        group_acl: Iterable[int] = (),
        chunk_size: int = IMPORT_CHUNK_SIZE,
    ) -> ImageInfo:
        """Uploads a squashfs image (admins and ImportUsers); it becomes "import/<tag>"."""
        size, digest = _size_and_sha256(path)
        header = gw_pb2.ImportHeader(system=system, tag=tag, format="squashfs",
                                     size_bytes=size, sha256=digest, user_acl=list(user_acl),
                                     group_acl=list(group_acl))

        def requests() -> Iterator[gw_pb2.ImportImageRequest]:
            yield gw_pb2.ImportImageRequest(header=header)
            with open(path, "rb") as image:
                while chunk := image.read(chunk_size):
                    yield gw_pb2.ImportImageRequest(chunk=chunk)

        response = self._unary("ImportImage", requests, timeout=self._pull_timeout)
        return image_from_proto(response.image)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------

    def _in_turn(self) -> list[tuple[int, str]]:
        count = len(self._addresses)
        order = [(self._preferred + step) % count for step in range(count)]
        return [(index, self._addresses[index]) for index in order]

    def _stub(self, address: str) -> gw_grpc.GatewayServiceStub:
        channel = self._channels.get(address)
        if channel is None:
            if self._tls is not None:
                channel = grpc.secure_channel(address, self._tls)
            else:
                channel = grpc.insecure_channel(address)
            self._channels[address] = channel
        return gw_grpc.GatewayServiceStub(channel)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self._credential_provider is None:
            return ()
        credential = self._credential_provider()
        return ((AUTH_METADATA_KEY, credential),) if credential else ()

    def _sealed_metadata(self, payload: bytes, credential: str | None
                         ) -> tuple[tuple[str, str], ...]:
        assert self._sealer is not None
        credential = credential or self._sealer(payload)
        if not credential:
            raise GatewayError("could not seal the credentials with MUNGE", code="UNKNOWN")
        return ((AUTH_METADATA_KEY, credential),)

    def _unary(self, method: str, request: Any, *,
               metadata: Callable[[], tuple[tuple[str, str], ...]] | None = None,
               timeout: float | None = None) -> Any:
        """Calls `method` on each gateway in turn until one answers; `request` may be a
        callable making a fresh request iterator (client streaming) per attempt."""
        last_error: GatewayError | None = None
        for index, address in self._in_turn():
            call = getattr(self._stub(address), method)
            message = request() if callable(request) else request
            try:
                response = call(message, timeout=timeout or self._timeout,
                                metadata=(metadata or self._metadata)())
            except grpc.RpcError as exc:
                error = error_from_rpc(exc, address=address)
                if not isinstance(error, Unavailable):
                    raise error from exc
                logger.info("gateway %s unavailable for %s; trying the next", address, method)
                last_error = error
                continue
            self._preferred = index
            return response
        assert last_error is not None
        raise last_error

    def _stream_pull(
        self, request: gw_pb2.PullImageRequest, timeout: float
    ) -> Iterator[PullUpdate]:
        """The pull's updates. A gateway lost mid-pull (restarted, killed) does not end the
        pull: the client joins it again through any gateway, up to PULL_REJOINS times."""
        rejoins = 0
        while True:
            try:
                yield from self._stream_pull_once(request, timeout)
                return
            except _GatewayLost as lost:
                if request.no_wait or rejoins >= PULL_REJOINS:
                    raise lost.error from lost
                rejoins += 1
                logger.warning("lost the gateway mid-pull (%s); joining the pull again "
                               "(%d of %d)", lost.error, rejoins, PULL_REJOINS)
                time.sleep(min(0.5 * 2 ** rejoins, 5.0))
                # Joining: a pull forced once is not forced again (it would start anew).
                request = gw_pb2.PullImageRequest()
                request.CopyFrom(lost.request)
                request.force = False

    def _stream_pull_once(
        self, request: gw_pb2.PullImageRequest, timeout: float
    ) -> Iterator[PullUpdate]:
        last_error: GatewayError | None = None
        for index, address in self._in_turn():
            call = self._stub(address).PullImage(
                request, timeout=timeout, metadata=self._metadata()
            )
            received = False
            try:
                for response in call:
                    received = True
                    yield update_from_proto(response)
            except grpc.RpcError as exc:
                error = error_from_rpc(exc, address=address)
                if received and isinstance(error, Unavailable):
                    raise _GatewayLost(error, request) from exc
                # Once updates flowed, the job lives on: do not start another here.
                if received or not isinstance(error, Unavailable):
                    raise error from exc
                logger.info("gateway %s unavailable for PullImage; trying the next", address)
                last_error = error
                continue
            finally:
                call.cancel()
            self._preferred = index
            return
        assert last_error is not None
        raise last_error


class _GatewayLost(Exception):
    """A pull's stream broke with UNAVAILABLE after updates had come."""

    def __init__(self, error: GatewayError, request: gw_pb2.PullImageRequest) -> None:
        super().__init__(str(error))
        self.error = error
        self.request = request


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise GatewayError(f"cannot read the CA certificate {path}: {exc.strerror}") from exc


def _size_and_sha256(path: str | os.PathLike[str]) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as image:
        while chunk := image.read(IMPORT_CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def ready_image(last: PullUpdate | None) -> ImageInfo:
    """The image of a finished pull stream; raises unless it ended READY."""
    if last is None:
        raise GatewayError("the gateway ended the pull without sending the image record")
    image = last.image
    if image.state == "READY":
        return image
    if image.state == "FAILED":
        raise PullFailed(
            image.failure_message or "the gateway gave no cause",
            code=image.failure_code or "UNKNOWN",
        )
    raise GatewayError(f"the pull stream ended while the image was {image.state or 'unknown'}")
