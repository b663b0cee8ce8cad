"""Decompresses the layers of the compiled one pass ahead of it, in threads, into bounded
buffers.

The compiled one pass (native_onepass.py) reads the layers newest first on one thread, and
each must be decompressed whole, the data newer layers hide included. While it reads
through hidden data (the large-files benchmark's second layer, 380 MB under an opaque
directory) tar2sqfs gets nothing and a core sits idle. `LayersAhead` opens each layer in a
thread of its own (`InflateAhead`) as soon as the layer before it in that order is opened:
the next layer is decompressed while the current one is written, and the current one keeps
being decompressed while the scanner parses what is already there (the inflaters release
the GIL). Each holds at most `AHEAD_BYTES` of decompressed data.

The bytes handed out are exactly the layer stream's, and so are its errors (a bad gzip
stream, the size cap, a failed download): each is raised where the stream raised it, after
the bytes read before it. Closing a stream, or the whole `LayersAhead`, stops its thread at
its next read (a read waiting for a download ends when the download does).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import BinaryIO

__all__ = ["AHEAD_BYTES", "READ_SIZE", "InflateAhead", "LayersAhead"]

#: Decompressed bytes one layer read ahead may hold (two layers are in flight at a time).
AHEAD_BYTES = 32 << 20
#: Bytes asked of the layer stream per read (its reads return at most its own cap).
READ_SIZE = 1 << 20


class InflateAhead:
    """One layer's decompressed stream, read ahead by a thread into a bounded buffer; the
    consumer reads it with `readinto`/`read` (from one thread) and closes it."""

    def __init__(self, open_stream: Callable[[], BinaryIO], *, name: str,
                 limit: int = AHEAD_BYTES, read_size: int = READ_SIZE) -> None:
        self._open = open_stream
        self._limit = limit
        self._read_size = read_size
        self._chunks: deque[memoryview] = deque()
        #: Bytes in _chunks (never more than max(limit, read_size)).
        self.held = 0
        #: The most bytes held at once (what the bound is checked on).
        self.peak = 0
        self._changed = threading.Condition()
        self._ended = False
        self._error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"inflate-{name[:20]}",
                                        daemon=True)

    def start(self) -> InflateAhead:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """Whether the reading thread is still alive."""
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- the consumer's side ---------------------------------------------------------

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Fills `buffer` with what is held (waiting for at least one byte); 0 at the end."""
        out = memoryview(buffer).cast("B")
        with self._changed:
            while not self._chunks:
                if self._stopped:
                    raise ValueError("read from a closed layer stream")
                if self._error is not None:
                    raise self._error
                if self._ended:
                    return 0
                self._changed.wait()
            filled = 0
            while self._chunks and filled < len(out):
                chunk = self._chunks[0]
                count = min(len(chunk), len(out) - filled)
                out[filled:filled + count] = chunk[:count]
                filled += count
                if count == len(chunk):
                    self._chunks.popleft()
                else:
                    self._chunks[0] = chunk[count:]
                self.held -= count
            self._changed.notify_all()
            return filled

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while part := self.read(self._read_size):
                parts.append(part)
            return b"".join(parts)
        buffer = bytearray(size)
        count = self.readinto(buffer)
        del buffer[count:]
        return bytes(buffer)

    def close(self) -> None:
        """Drops what is held and stops the thread at its next read (the thread closes
        the layer stream)."""
        with self._changed:
            self._stopped = True
            self._chunks.clear()
            self.held = 0
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._stopped

    def __enter__(self) -> InflateAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the reading thread ----------------------------------------------------------

    def _run(self) -> None:
        stream: BinaryIO | None = None
        try:
            stream = self._open()
            while self._wait_for_room():
                data = stream.read(self._read_size)
                with self._changed:
                    if self._stopped:
                        return
                    if not data:
                        self._ended = True
                    else:
                        self._chunks.append(memoryview(data))
                        self.held += len(data)
                        self.peak = max(self.peak, self.held)
                    self._changed.notify_all()
                if not data:
                    return
        except BaseException as exc:  # noqa: BLE001 - raised to the consumer, in order
            with self._changed:
                self._error = exc
                self._changed.notify_all()
        finally:
            if stream is not None:
                stream.close()

    def _wait_for_room(self) -> bool:
        """Waits until one more read stays within the limit; False once closed."""
        with self._changed:
            while not self._stopped and self.held \
                    and self.held + self._read_size > self._limit:
                self._changed.wait()
            return not self._stopped


class LayersAhead:
    """Layers opened in the order the one pass reads them, each read ahead (InflateAhead):
    opening one starts the next. Closing it stops every thread not handed out yet; a
    stream handed out is closed by whoever reads it."""

    def __init__(self, open_layer: Callable[[int], BinaryIO], order: Iterable[int], *,
                 limit: int = AHEAD_BYTES, name: Callable[[int], str] = str) -> None:
        self._open_layer = open_layer
        self._order = list(order)
        self._limit = limit
        self._name = name
        self._started: dict[int, InflateAhead] = {}
        self._lock = threading.Lock()
        self._closed = False

    def open(self, number: int) -> BinaryIO:
        """Layer `number`'s stream (read ahead since the layer before it was opened); the
        layer after it in the order starts now."""
        with self._lock:
            if self._closed:
                raise ValueError("the layers read ahead are closed")
            stream = self._started.pop(number, None) or self._start(number)
            position = self._order.index(number)
            if position + 1 < len(self._order):
                following = self._order[position + 1]
                if following not in self._started:
                    self._started[following] = self._start(following)
        return stream  # type: ignore[return-value]  # reads like a binary file

    def _start(self, number: int) -> InflateAhead:
        return InflateAhead(lambda: self._open_layer(number), name=self._name(number),
                            limit=self._limit).start()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            started, self._started = list(self._started.values()), {}
        for stream in started:
            stream.close()

    def __enter__(self) -> LayersAhead:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
