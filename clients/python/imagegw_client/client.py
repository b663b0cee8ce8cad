"""`GatewayClient`: the blocking SDK over imagegw.v1.GatewayService.

It owns one channel per gateway address, tries the addresses in turn when one is
UNAVAILABLE (starting with the last one that answered), attaches a fresh
credential to every attempt, and turns protos and gRPC errors into plain data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
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

logger = logging.getLogger(__name__)

#: gRPC metadata key carrying the caller's MUNGE credential.
AUTH_METADATA_KEY = "authentication"
DEFAULT_TIMEOUT = 30.0
#: How long a waiting pull may stream before the client gives up.
DEFAULT_PULL_TIMEOUT = 3600.0
_LIST_PAGE_SIZE = 100


class GatewayClient:
    """A client for one site's gateways. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        credential_provider: Callable[[], str | None] | None = None,
        pull_timeout: float = DEFAULT_PULL_TIMEOUT,
    ) -> None:
        if isinstance(addresses, str):
            addresses = [addresses]
        self._addresses = [a.strip() for a in addresses if a.strip()]
        if not self._addresses:
            raise ValueError("GatewayClient needs at least one gateway address (host:port)")
        self._timeout = timeout
        self._pull_timeout = pull_timeout
        self._credential_provider = credential_provider
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
        state_value = image_state_value(state) if state else 0
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
            channel = grpc.insecure_channel(address)
            self._channels[address] = channel
        return gw_grpc.GatewayServiceStub(channel)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self._credential_provider is None:
            return ()
        credential = self._credential_provider()
        return ((AUTH_METADATA_KEY, credential),) if credential else ()

    def _unary(self, method: str, request: Any) -> Any:
        last_error: GatewayError | None = None
        for index, address in self._in_turn():
            call = getattr(self._stub(address), method)
            try:
                response = call(request, timeout=self._timeout, metadata=self._metadata())
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
                # Once updates flowed, the job lives on that gateway: do not start another.
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
