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

The data of files the layers already read by the one pass hide (`HiddenPaths`: an entry
or whiteout at the path, a whiteout, opaque marker or non-directory above it: what
native/onepass.c hides, from fewer layers) is not held: the thread follows the layer's
plain ustar headers (`_HiddenData`; the first header of any other kind ends that for the
layer) and hands out that data as zeros, which the scanner skips, as it skips any hidden
data, without looking at it. So a layer hidden whole is decompressed while the layer
before it is written, without holding it. Every other byte handed out is exactly the
layer stream's, and so are its errors (a bad gzip stream, the size cap, a failed
download): each is raised where the stream raised it, after the bytes read before it.
Closing a stream, or the whole `LayersAhead`, stops its thread at its next read (a read
waiting for a download ends when the download does).
"""

from __future__ import annotations

import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import BinaryIO, Self

from imagegw.domain.errors import ContentRejected

from . import compact
from .members import Kind, MarkerKind, normalize_name
from .tarstream import BLOCK, REGULAR, ZERO_BLOCK, _parse_header

__all__ = ["AHEAD_BYTES", "READ_SIZE", "HiddenPaths", "InflateAhead", "LayersAhead"]

#: Decompressed bytes one layer read ahead may hold (two layers are in flight at a time).
AHEAD_BYTES = 4 << 20
#: Bytes asked of the layer stream per read (its reads return at most its own cap).
READ_SIZE = 1 << 20
#: Hidden file data smaller than this is handed out as it is (not worth a piece of its own).
ZERO_MIN = 64 << 10
#: Headers followed in a layer before giving up when its members are small on average
#: (below ZERO_MIN): parsing each in Python would cost more than it saves.
SMALL_MEMBERS = 64
#: Entries the newer layers may have for their hidden paths to be collected (a set of
#: Python strings each); above it, nothing is zeroed.
MAX_HIDING_ENTRIES = 100_000

_ZEROS = memoryview(bytes(READ_SIZE))
_HEADER_ONLY = frozenset("123456")
_COUNTS = struct.Struct("<8sII")


class HiddenPaths:
    """What the layers already read hide from an older layer, as native/onepass.c hides
    it (`onepass_hide`): every entry its path, a non-directory entry, a whiteout and an
    opaque marker everything below."""

    def __init__(self, indexes: Sequence[bytes]) -> None:
        self._at: set[str] = set()
        self._below: set[str] = set()
        for data in indexes:
            entries, markers = compact.paths(data)
            for entry_kind, path in entries:
                self._at.add(path)
                if entry_kind is not Kind.DIR:
                    self._below.add(path)
            for kind, path in markers:
                self._below.add(path)
                if kind is MarkerKind.WHITEOUT:
                    self._at.add(path)

    @staticmethod
    def entries(indexes: Sequence[bytes]) -> int:
        """Entries and markers in the indexes (from their headers alone)."""
        return sum(sum(_COUNTS.unpack_from(data)[1:]) for data in indexes)

    def hides(self, path: str) -> bool:
        if path in self._at or "" in self._below:
            return True
        slash = path.find("/")
        while slash >= 0:
            if path[:slash] in self._below:
                return True
            slash = path.find("/", slash + 1)
        return False


class _HiddenData:
    """Follows a layer's tar headers as its bytes go by and says which bytes are the data
    of regular files `hides` (a normalised path) is true for.

    Only what tarstream.TarReader reads the same way is followed: plain ustar and v7
    headers; at the first extension header (PAX, GNU long names), unknown type, header
    that does not parse, or the end of the archive, it stops, and the rest of the layer
    goes out as it is. So it never calls data what the scanner reads as a header."""

    def __init__(self, hides: Callable[[], Callable[[str], bool] | None], layer: str) -> None:
        self._hides = hides
        self._hides_made = False
        self._hidden: Callable[[str], bool] | None = None
        self._layer = layer
        self._at = 0              # stream offset of the next byte to come
        self._header_at = 0       # stream offset of the next header
        self._header = bytearray()
        self._zero = (0, 0)       # the hidden data being passed: [start, end)
        self._members = 0
        self._data = 0
        self.following = True
        #: The stream offsets of the data handed out as zeros, one per member.
        self.zeroed_at: list[int] = []

    def pieces(self, chunk: memoryview) -> list[memoryview | int]:
        """`chunk` (the next bytes of the layer) as pieces: bytes to hand out, or a count
        of hidden data bytes (handed out as zeros)."""
        pieces: list[memoryview | int] = []
        at, end = 0, len(chunk)
        while at < end:
            here = self._at + at
            if not self.following:
                pieces.append(chunk[at:])
                break
            start, stop = self._zero
            if start <= here < stop:
                count = min(stop - here, end - at)
                pieces.append(count)
            elif here < self._header_at:
                count = min(self._header_at - here, end - at)
                if here < start:
                    count = min(count, start - here)
                pieces.append(chunk[at:at + count])
            else:
                count = min(BLOCK - len(self._header), end - at)
                self._header += chunk[at:at + count]
                pieces.append(chunk[at:at + count])
                if len(self._header) == BLOCK:
                    self._parse(bytes(self._header), self._header_at)
                    self._header.clear()
            at += count
        self._at += end
        return pieces

    def _parse(self, block: bytes, offset: int) -> None:
        self.following = False
        if block == ZERO_BLOCK:
            return
        try:
            member = _parse_header(block, self._layer, offset)
        except ContentRejected:
            return  # the scanner refuses it: nothing after it matters
        if member.type in _HEADER_ONLY:
            self._header_at = offset + BLOCK
            self.following = True
            return
        if member.type != REGULAR or member.size < 0:
            return
        data = offset + BLOCK
        self._header_at = data + (member.size + BLOCK - 1) // BLOCK * BLOCK
        self._members += 1
        self._data += member.size
        if self._members > SMALL_MEMBERS and self._data < ZERO_MIN * self._members:
            return
        self.following = True
        if member.size >= ZERO_MIN and self._hides_path(member.name):
            self._zero = (data, data + member.size)
            self.zeroed_at.append(data)

    def _hides_path(self, name: str) -> bool:
        if not self._hides_made:
            self._hides_made = True
            self._hidden = self._hides()
        if self._hidden is None:
            return False
        try:
            path = normalize_name(name, layer=self._layer)
        except ContentRejected:
            return False
        return self._hidden(path)


class InflateAhead:
    """One layer's decompressed stream, read ahead by a thread into a bounded buffer; the
    consumer reads it with `readinto`/`read` (from one thread) and closes it.

    `hides()`, when given, is asked (once, in the thread, and only when the layer has
    large files) for what hides paths from this layer; their data is handed out as
    zeros without being held."""

    def __init__(self, open_stream: Callable[[], BinaryIO], *, name: str,
                 limit: int = AHEAD_BYTES, read_size: int = READ_SIZE,
                 hides: Callable[[], Callable[[str], bool] | None] | None = None) -> None:
        self._open = open_stream
        self._name = name
        self._limit = limit
        self._read_size = read_size
        self._hidden_data = None if hides is None else _HiddenData(hides, name)
        #: Bytes to hand out (memoryview) and runs of hidden data (int: that many zeros).
        self._pieces: deque[memoryview | int] = deque()
        #: Bytes held in _pieces (never more than max(limit, read_size)).
        self.held = 0
        #: The most bytes held at once (what the bound is checked on).
        self.peak = 0
        #: Bytes of hidden data handed out as zeros.
        self.zeroed = 0
        self._changed = threading.Condition()
        self._ended = False
        self._error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"inflate-{name[:20]}",
                                        daemon=True)

    @property
    def zeroed_at(self) -> list[int]:
        """Where the data handed out as zeros starts, one offset in the decompressed
        layer per member (read it once the layer was read to its end)."""
        return [] if self._hidden_data is None else list(self._hidden_data.zeroed_at)

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
            if not self._wait_for_pieces():
                return 0
            filled = 0
            while self._pieces and filled < len(out):
                taken = self._take(len(out) - filled)
                out[filled:filled + len(taken)] = taken
                filled += len(taken)
            self._changed.notify_all()
            return filled

    def borrow(self, size: int) -> memoryview:
        """Up to `size` of the next bytes, lent as they are held instead of copied (the
        compiled one pass writes a file's data from them: native/scan.c); waits for at
        least one byte; empty at the end. The bytes are the consumer's from then on."""
        with self._changed:
            if not self._wait_for_pieces():
                return memoryview(b"")
            lent = self._take(size)
            self._changed.notify_all()
            return lent

    def _take(self, size: int) -> memoryview:
        """Up to `size` bytes of the first piece (lock held; a piece is held): its bytes,
        or zeros for hidden data."""
        piece = self._pieces[0]
        if isinstance(piece, int):
            count = min(piece, size, len(_ZEROS))
            taken = _ZEROS[:count]
            left: memoryview | int = piece - count
        else:
            taken = piece[:size]
            left = piece[len(taken):]
            self.held -= len(taken)
        if len(left) if isinstance(left, memoryview) else left:
            self._pieces[0] = left
        else:
            self._pieces.popleft()
        return taken

    def _wait_for_pieces(self) -> bool:
        """Waits (lock held) until a piece is held: True, or False at the end; raises
        the stream's error in order, or ValueError once closed."""
        while not self._pieces:
            if self._stopped:
                raise ValueError("read from a closed layer stream")
            if self._error is not None:
                raise self._error
            if self._ended:
                return False
            self._changed.wait()
        return True

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
            self._pieces.clear()
            self.held = 0
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._stopped

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the reading thread ----------------------------------------------------------

    def _run(self) -> None:
        stream: BinaryIO | None = None
        hidden = self._hidden_data
        try:
            stream = self._open()
            while self._wait_for_room():
                data = stream.read(self._read_size)
                chunk = memoryview(data)
                pieces: list[memoryview | int] = \
                    [chunk] if hidden is None or not data else hidden.pieces(chunk)
                with self._changed:
                    if self._stopped:
                        return
                    if not data:
                        self._ended = True
                    self._add(pieces)
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

    def _add(self, pieces: list[memoryview | int]) -> None:
        for piece in pieces:
            if isinstance(piece, int):
                self.zeroed += piece
                if self._pieces and isinstance(self._pieces[-1], int):
                    self._pieces[-1] += piece
                    continue
            elif not piece:
                continue
            else:
                self.held += len(piece)
            self._pieces.append(piece)
        self.peak = max(self.peak, self.held)

    def _wait_for_room(self) -> bool:
        """Waits until one more read stays within the limit; False once closed."""
        with self._changed:
            while not self._stopped and self.held \
                    and self.held + self._read_size > self._limit:
                self._changed.wait()
            return not self._stopped


class LayersAhead:
    """Layers opened in the order the one pass reads them, each read ahead (InflateAhead):
    opening one starts the next. `layer_read(i, index)` gives it each layer's compact
    index once the pass has read it: what those hide is not held for the older layers
    started after. Closing it stops every thread not handed out yet; a stream handed
    out is closed by whoever reads it."""

    def __init__(self, open_layer: Callable[[int], BinaryIO], order: Iterable[int], *,
                 limit: int | None = None, name: Callable[[int], str] = str) -> None:
        self._open_layer = open_layer
        self._order = list(order)
        self._limit = AHEAD_BYTES if limit is None else limit
        self._name = name
        self._started: dict[int, InflateAhead] = {}
        self._every: dict[int, InflateAhead] = {}
        self._read: list[bytes] = []
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

    def layer_read(self, number: int, index: bytes) -> None:
        """Layer `number` was read to its end by the pass: `index` is its compact index."""
        with self._lock:
            self._read.append(index)

    def _start(self, number: int) -> InflateAhead:
        newer = list(self._read)  # only layers read whole: what they hide stays hidden

        def hides() -> Callable[[str], bool] | None:
            if not newer or HiddenPaths.entries(newer) > MAX_HIDING_ENTRIES:
                return None
            return HiddenPaths(newer).hides

        stream = InflateAhead(lambda: self._open_layer(number), name=self._name(number),
                              limit=self._limit, hides=hides)
        self._every[number] = stream
        return stream.start()

    def zeroed(self) -> dict[int, list[int]]:
        """The layers some of whose data was handed out as zeros: the offsets of that
        data (`InflateAhead.zeroed_at`). The one pass must have written none of it, which
        its caller checks against the exact tree (squashfs.py): the hiding rules here are
        a copy of onepass.c's, and a difference must cost a second pass, never data."""
        with self._lock:
            every = list(self._every.items())
        return {number: offsets for number, stream in every
                if (offsets := stream.zeroed_at)}

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            started, self._started = list(self._started.values()), {}
        for stream in started:
            stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
