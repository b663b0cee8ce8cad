"""The gateway's gRPC edge on asyncio: GatewayService as coroutines.

Each call is charged to its caller's fair share (`imagegw.gateway.core.fairshare`):
at once by peer host when it carries no credential, by uid once the credential is
verified; a stream (PullImage, ImportImage) costs a stream for as long as it is
open, joined pulls included, and every other call a call while it runs. The
blocking work of `GatewayServicer` runs on the bounded pools of `Blocking`;
PullImage streams wait for progress on the loop, holding no thread. Every error
becomes its status here (one table, imagegw.rpc.status); anything outside our
tree is logged and becomes INTERNAL."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, NoReturn, TypeVar

import grpc

from imagegw.domain.errors import ImageGatewayError, InvalidRequest
from imagegw.gateway.aio import Blocking, watch_pull
from imagegw.gateway.api.convert import status_to_image
from imagegw.gateway.api.servicer import CallContext, GatewayServicer
from imagegw.gateway.auth import METADATA_KEY
from imagegw.gateway.core.fairshare import Admission, FairShare, Kind
from imagegw.rpc.status import status_for
from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import gateway_service_pb2_grpc

__all__ = ["AsyncGatewayServicer", "peer_host"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@functools.lru_cache(maxsize=4096)  # every call of a connection has the same peer
def peer_host(peer: str) -> str:
    """The host of a gRPC peer (`ipv4:127.0.0.1:5000` -> `127.0.0.1`, `ipv6:[::1]:5000`
    -> `::1`); the transport name for others (`unix`)."""
    transport, _, rest = peer.partition(":")
    if transport in ("ipv4", "ipv6") and rest:
        return rest.rsplit(":", 1)[0].strip("[]")
    return transport or "unknown"


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    if isinstance(exc, ImageGatewayError):
        await context.abort(status_for(exc), str(exc))
    log.error("unexpected error", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")
    raise AssertionError("abort returned")  # pragma: no cover


class _Call:
    """One call's admission and metadata. `end()` gives the charge back once the call is
    over and no thread still works for it (a caller who cancels cannot pile up work)."""

    def __init__(self, admission: Admission, metadata: tuple[tuple[str, Any], ...],
                 peer: str, call: grpc.aio.ServicerContext) -> None:
        self.admission = admission
        self.metadata = metadata
        self._peer = peer
        self._call = call
        self._context: CallContext | None = None
        self._busy: Future[Any] | None = None

    @property
    def context(self) -> CallContext:
        """The `CallContext` for the pool, read from the call on the loop when first
        needed (a lookup answered on the loop never reads its transport security)."""
        if self._context is None:
            self._context = CallContext(self.metadata, self._peer, self._call.auth_context(),
                                        self.admission)
        return self._context

    async def run(self, pool: Executor, function: Callable[..., T], *args: Any) -> T:
        """`function(*args, context)` on `pool`."""
        future = pool.submit(function, *args, self.context)
        self._busy = future
        result = await asyncio.wrap_future(future)
        self._busy = None
        return result

    def end(self) -> None:
        busy = self._busy
        if busy is None or busy.done():
            self.admission.release()
        else:
            busy.add_done_callback(lambda _: self.admission.release())


def _open(share: FairShare, context: grpc.aio.ServicerContext, kind: Kind) -> _Call:
    """The call, charged at once when it carries no credential."""
    metadata = tuple(context.invocation_metadata() or ())
    peer = context.peer()
    admission = Admission(share, kind, peer_host(peer))
    if not any(key.lower() == METADATA_KEY for key, _ in metadata):
        admission.charge(None)
    return _Call(admission, metadata, peer, context)


#: Seconds an import may wait for its next chunk before it is given up.
IMPORT_IDLE_SECONDS = 120.0


async def _next_request(requests: AsyncIterator[T]) -> T:
    return await anext(requests)


def _blocking_requests(first: T, requests: AsyncIterator[T], loop: asyncio.AbstractEventLoop
                       ) -> Iterator[T]:
    """A client stream read from a pool thread: `first` (read on the loop), then each
    further message fetched on the loop, waiting at most IMPORT_IDLE_SECONDS for it."""
    yield first
    while True:
        future = asyncio.run_coroutine_threadsafe(_next_request(requests), loop)
        try:
            yield future.result(IMPORT_IDLE_SECONDS)
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            future.cancel()
            raise InvalidRequest(f"no import data arrived for {IMPORT_IDLE_SECONDS:.0f} s",
                                 hint="send the image's chunks without pausing") from exc


class AsyncGatewayServicer(gateway_service_pb2_grpc.GatewayServiceServicer):
    def __init__(self, servicer: GatewayServicer, share: FairShare, blocking: Blocking) -> None:
        self.servicer = servicer
        self.share = share
        self.blocking = blocking

    async def _answer(self, pool: Executor, method: Callable[..., T], request: Any,
                      context: grpc.aio.ServicerContext) -> T:
        call: _Call | None = None
        try:
            call = _open(self.share, context, Kind.CALL)
            return await call.run(pool, method, request)
        except Exception as exc:  # translated in one place
            await _abort(context, exc)
        finally:
            if call is not None:
                call.end()

    async def PullImage(self, request: pb.PullImageRequest,  # noqa: N802
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.PullImageResponse]:
        call: _Call | None = None
        try:
            call = _open(self.share, context, Kind.STREAM)
            ticket = await call.run(self.blocking.fast, self.servicer.begin_pull, request)
            if ticket.answer is not None:
                yield pb.PullImageResponse(image=status_to_image(ticket.answer))
                return
            if request.no_wait:
                status = await self.blocking.run(self.servicer.pulls.status, ticket.key)
                yield pb.PullImageResponse(image=status_to_image(status))
                return
            async with contextlib.aclosing(
                    watch_pull(self.servicer.pulls, ticket, self.blocking)) as statuses:
                async for status in statuses:
                    yield self.servicer.pull_response(status)
        except Exception as exc:
            await _abort(context, exc)
        finally:
            if call is not None:
                call.end()

    async def LookupImage(self, request: pb.LookupImageRequest,  # noqa: N802
                          context: grpc.aio.ServicerContext) -> pb.LookupImageResponse:
        """Answered on the loop when the lookup cache has it for an anonymous caller (the
        lookups of every job submission), else on the fast pool; charged either way."""
        call: _Call | None = None
        try:
            call = _open(self.share, context, Kind.CALL)
            answer = self.servicer.cached_lookup(request, call.metadata)
            if answer is not None:
                return answer
            return await call.run(self.blocking.fast, self.servicer.LookupImage, request)
        except Exception as exc:  # translated in one place
            await _abort(context, exc)
        finally:
            if call is not None:
                call.end()

    async def ListImages(self, request: pb.ListImagesRequest,  # noqa: N802
                         context: grpc.aio.ServicerContext) -> pb.ListImagesResponse:
        return await self._answer(self.blocking.fast, self.servicer.ListImages, request, context)

    async def ListJobs(self, request: pb.ListJobsRequest,  # noqa: N802
                       context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        return await self._answer(self.blocking.fast, self.servicer.ListJobs, request, context)

    async def ExpireImage(self, request: pb.ExpireImageRequest,  # noqa: N802
                          context: grpc.aio.ServicerContext) -> pb.ExpireImageResponse:
        return await self._answer(self.blocking.fast, self.servicer.ExpireImage, request, context)

    async def ExpireUnusedImages(self, request: pb.ExpireUnusedImagesRequest,  # noqa: N802
                                 context: grpc.aio.ServicerContext
                                 ) -> pb.ExpireUnusedImagesResponse:
        return await self._answer(self.blocking.fast, self.servicer.ExpireUnusedImages,
                                  request, context)

    async def Login(self, request: pb.LoginRequest,  # noqa: N802
                    context: grpc.aio.ServicerContext) -> pb.LoginResponse:
        return await self._answer(self.blocking.slow, self.servicer.Login, request, context)

    async def Logout(self, request: pb.LogoutRequest,  # noqa: N802
                     context: grpc.aio.ServicerContext) -> pb.LogoutResponse:
        return await self._answer(self.blocking.fast, self.servicer.Logout, request, context)

    async def ImportImage(self, request_iterator: AsyncIterator[pb.ImportImageRequest],  # noqa: N802
                          context: grpc.aio.ServicerContext) -> pb.ImportImageResponse:
        """A stream: once its header is in, a slow-pool thread checks it and writes the
        chunks as they arrive."""
        call: _Call | None = None
        try:
            call = _open(self.share, context, Kind.STREAM)
            # Counted by peer host even with a credential: it can only be checked once the
            # header names the system, and a stream that never sends one must cost too.
            call.admission.charge(None)
            # The header is awaited here, so a caller who never sends it holds no thread;
            # the servicer refuses callers who may not import before reading any chunk.
            requests = aiter(request_iterator)
            try:
                first = await asyncio.wait_for(anext(requests, None), IMPORT_IDLE_SECONDS)
            except TimeoutError as exc:
                raise InvalidRequest(f"no import header arrived for {IMPORT_IDLE_SECONDS:.0f} s",
                                     hint="send ImportHeader, then the image in chunks") from exc
            if first is None:
                raise InvalidRequest("an import starts with a header message",
                                     hint="send ImportHeader, then the image in chunks")
            chunks = _blocking_requests(first, requests, asyncio.get_running_loop())
            return await call.run(self.blocking.slow, self.servicer.ImportImage, chunks)
        except Exception as exc:
            await _abort(context, exc)
        finally:
            if call is not None:
                call.end()
