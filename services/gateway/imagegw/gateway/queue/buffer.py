"""The bounded, thread-safe event buffer behind every progress subscription.

When a slow reader lets it fill up, the oldest events go first; the newest
event (often the final state) always gets in. `dropped` counts what was lost.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from imagegw.gateway.queue.base import ProgressEvent, QueueUnavailable

DEFAULT_BUFFER_SIZE = 256


class EventBuffer:
    def __init__(self, size: int = DEFAULT_BUFFER_SIZE) -> None:
        if size < 1:
            raise ValueError(f"buffer size must be at least 1, got {size}")
        self._events: deque[ProgressEvent] = deque(maxlen=size)
        self._cond = threading.Condition()
        self._dropped = 0
        self._closed = False
        self._broken: QueueUnavailable | None = None
        self._wake: Callable[[], None] | None = None

    @property
    def dropped(self) -> int:
        """How many events were dropped because the reader was too slow."""
        with self._cond:
            return self._dropped

    def put(self, event: ProgressEvent) -> None:
        with self._cond:
            if self._closed:
                return
            if len(self._events) == self._events.maxlen:
                self._dropped += 1
            self._events.append(event)
            self._cond.notify_all()
        self._wake_reader()

    def notify(self, wake: Callable[[], None] | None) -> None:
        """Calls `wake()` (from the putting thread; it must not block) after every event,
        failure and close, for a reader that waits elsewhere than in `get` (an event loop:
        `loop.call_soon_threadsafe`); then `get(0)` reads without blocking."""
        with self._cond:
            self._wake = wake
        self._wake_reader()

    def _wake_reader(self) -> None:
        wake = self._wake
        if wake is not None:
            wake()

    def get(self, timeout: float) -> ProgressEvent | None:
        """The oldest buffered event, or None after `timeout` seconds (or once closed).

        Raises the error given to `break_with` once the buffered events are read."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while not self._events:
                if self._broken is not None:
                    raise self._broken
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._events.popleft()

    def break_with(self, error: QueueUnavailable) -> None:
        """The source failed: readers get `error` after the events already buffered."""
        with self._cond:
            self._broken = error
            self._cond.notify_all()
        self._wake_reader()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._events.clear()
            self._cond.notify_all()
        self._wake_reader()


class BufferedSubscription:
    """One subscriber of a progress channel, whatever the hub: its hub delivers events (or
    a broken connection) into a bounded buffer; `close` tells the hub it is gone."""

    def __init__(self, channel: str, buffer_size: int,
                 on_close: Callable[[BufferedSubscription], None]) -> None:
        self.channel = channel
        self._on_close = on_close
        self._buffer = EventBuffer(buffer_size)

    @property
    def dropped(self) -> int:
        """Events lost because this subscriber read too slowly."""
        return self._buffer.dropped

    def deliver(self, event: ProgressEvent) -> None:
        self._buffer.put(event)

    def break_with(self, error: QueueUnavailable) -> None:
        self._buffer.break_with(error)

    def get(self, timeout: float) -> ProgressEvent | None:
        return self._buffer.get(timeout)

    def notify(self, wake: Callable[[], None] | None) -> None:
        self._buffer.notify(wake)

    def close(self) -> None:
        self._on_close(self)
        self._buffer.close()
