"""The gateway's asyncio side, shared by every asynchronous edge (gRPC, REST): the one
event loop on a thread of its own (`EventLoopThread`), the bounded thread pools the
synchronous core runs on (`Blocking`), and a pull's progress as an async iterator
(`watch_pull`) that waits on the loop, not on a thread. No grpc here."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from imagegw.gateway.core.pulls import PullManager, PullTicket, PullWatch
from imagegw.gateway.core.views import ImageStatus
from imagegw.gateway.queue.base import ProgressHub, Subscription

__all__ = ["AsyncServer", "Blocking", "EventLoopThread", "watch_pull"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: An asynchronous server another edge adds to the gateway (see GatewayApp.add_async_server):
#: a coroutine function run on the loop at start that returns the coroutine function
#: stopping it, which gets the seconds of grace.
AsyncServer = Callable[[], Coroutine[Any, Any, Callable[[float], Awaitable[None]]]]


class EventLoopThread:
    """One asyncio event loop, run on a daemon thread; other threads hand it work."""

    def __init__(self, name: str = "gateway-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedules `coroutine` on the loop from another thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Runs `coroutine` on the loop and waits for its result (from another thread)."""
        return self.submit(coroutine).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancels what still runs on the loop, stops it and closes it."""
        if not self._thread.is_alive():
            self.loop.close()
            return
        with contextlib.suppress(Exception):
            self.run(_cancel_others(), timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


async def _cancel_others() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


class Blocking:
    """The bounded thread pools the loop hands the synchronous core to: `run` for work
    of milliseconds (records, MUNGE), `run_slow` for work that may wait on the network
    for long (registry logins, imports), so slow work never queues ahead of lookups.
    Waiting streams hold no thread of either."""

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.threads = threads
        self.fast = ThreadPoolExecutor(threads, thread_name_prefix="gateway-fast")
        self.slow = ThreadPoolExecutor(threads, thread_name_prefix="gateway-slow")

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.fast, functools.partial(function, *args))

    async def run_slow(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.slow, functools.partial(function, *args))

    def later(self, function: Callable[[], object]) -> None:
        """Runs `function` on the fast pool without waiting for it (clean-ups)."""
        try:
            self.fast.submit(function)
        except RuntimeError:  # shut down: run it here, it is the last thing left
            function()

    def shutdown(self) -> None:
        self.fast.shutdown(wait=False, cancel_futures=True)
        self.slow.shutdown(wait=False, cancel_futures=True)


def _subscribe(hub: ProgressHub, channel: str, wake: Callable[[], None]) -> Subscription:
    subscription = hub.subscribe(channel)
    subscription.notify(wake)
    return subscription


async def watch_pull(pulls: PullManager, ticket: PullTicket,
                     blocking: Blocking) -> AsyncGenerator[ImageStatus, None]:
    """The pull's status, then its progress, until READY or FAILED, as
    `PullManager.watch` yields them; between events it waits on the loop (the hub
    wakes it with `call_soon_threadsafe`), so a stream nobody reads costs no thread.
    Use it with `contextlib.aclosing` so its subscription closes when the caller goes."""
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(woken.set)

    watch = PullWatch(pulls, ticket)
    subscription = await blocking.run(_subscribe, pulls.hub, watch.job_id, wake)
    try:
        yield await blocking.run(watch.begin)
        while not watch.done:
            event = subscription.get(0)
            if event is None and not watch.stale():
                woken.clear()
                event = subscription.get(0)  # an event put before clear() set nothing
                if event is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), max(watch.seconds_to_stale(), 0.01))
                    continue
            if not watch.needs_store(event):
                yield watch.progress(event)  # type: ignore[arg-type]
                continue
            job_id = watch.job_id
            statuses = await blocking.run(watch.reread, event)
            if watch.job_id != job_id:
                old, subscription = subscription, await blocking.run(
                    _subscribe, pulls.hub, watch.job_id, wake)
                old.notify(None)
                blocking.later(old.close)
            for status in statuses:
                yield status
    finally:
        subscription.notify(None)
        blocking.later(subscription.close)
