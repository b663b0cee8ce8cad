"""Reads the next layer ahead, in a thread, while the one-pass flatten writes the current one.

The one-pass flatten (streaming.py) reads the layers newest first, one after the other,
in one thread. Decompressing is most of its work, and data hidden by newer layers must
be decompressed too, only to be skipped: while that happens tar2sqfs has nothing to
do. A `LayerAhead` reads layer i-1 while layer i is written: it decompresses and parses
it, applies the member rules, skips the data of files that newer layers already hide,
and holds the data of the others until the flatten comes to them (the inflaters release
the GIL, so this runs beside the writing thread). Once `AHEAD_BYTES` of data are held,
the member that would pass them is handed over with the rest of the layer: the flatten
reads on from there itself, as it does with a `LayerInline`. (Reading whole layers
ahead, holding at most that much at a time, made the 46k-file image 6 % slower: every
member then went through the hand-over between the threads.)

Both give the flatten (member, admitted, data) in the layer's order; `copy` writes a
member's data. Skipping is decided with what the newer layers hide at that moment,
which only grows while the layers are read: a member skipped here is one the flatten
finds hidden as well (and if it ever did not, `copy` refuses: the flatten falls back).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, Final

from .members import Admitted, Dropped, Kind, Marker, MemberPolicy, admit
from .tarstream import REGULAR, RawMember, TarReader

__all__ = ["AHEAD_BYTES", "LayerAhead", "LayerInline", "LayerSource", "DataNotKept"]

#: File data a layer read ahead may hold for the flatten (one layer is read ahead).
AHEAD_BYTES = 8 << 20

Result = Admitted | Marker | Dropped
#: How a member's data is reached: bytes read ahead, SKIPPED, or IN_STREAM (read it now).
Data = bytes | None
SKIPPED: Final = None  # Final: `data is SKIPPED` narrows Data to bytes
IN_STREAM = b"\0in-stream"  # a sentinel compared by identity


class DataNotKept(Exception):
    """The flatten wants the data of a member skipped as hidden (it must fall back)."""


class LayerInline:
    """A layer read by the flatten's own thread."""

    def __init__(self, stream: BinaryIO, layer: str, policy: MemberPolicy) -> None:
        self._stream = stream
        self._reader = TarReader(stream, layer=layer)
        self._layer = layer
        self._policy = policy

    def __iter__(self) -> Iterator[tuple[RawMember, Result, Data]]:
        return _admit_each(self._reader, self._layer, self._policy)

    def copy(self, member: RawMember, data: Data, out: BinaryIO,
             on_bytes: Callable[[int], None] | None) -> None:
        self._reader.copy_data(member, out, on_bytes)

    def close(self) -> None:
        self._stream.close()


class LayerAhead:
    """A layer read by a thread of its own, ahead of the flatten (see the module doc)."""

    def __init__(self, open_layer: Callable[[], BinaryIO], layer: str, policy: MemberPolicy,
                 hidden: Callable[[str], bool], limit: int | None = None) -> None:
        self._open = open_layer
        self._layer = layer
        self._policy = policy
        self._hidden = hidden
        self._limit = AHEAD_BYTES if limit is None else limit
        self._items: deque[tuple[list[tuple], int]] = deque()  # (batch, its bytes of data)
        self._held = 0  # bytes of data in _items
        self._changed = threading.Condition()
        self._stopped = False
        self._stream: BinaryIO | None = None
        #: Whether the rest of the layer (and closing it) went to the flatten.
        self._handed_over = False
        self._reader: TarReader | None = None  # the reader, once the flatten reads on
        self._thread = threading.Thread(target=self._run, name=f"layer-ahead-{layer[:19]}",
                                        daemon=True)

    def start(self) -> LayerAhead:
        self._thread.start()
        return self

    # -- the flatten's side ---------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[RawMember, Result, Data]]:
        while True:
            with self._changed:
                while not self._items:
                    if not self._thread.is_alive():
                        raise RuntimeError(f"reading layer {self._layer} ahead ended early")
                    self._changed.wait(timeout=1.0)
                batch, size = self._items.popleft()
                self._held -= size
                self._changed.notify_all()
            for item in batch:
                kind = item[0]
                if kind == "member":
                    yield item[1], item[2], item[3]
                elif kind == "error":
                    raise item[1]
                elif kind == "end":
                    return
                else:  # "rest": the reader, positioned at this member's data
                    _, member, result, members, reader = item
                    self._reader = reader
                    yield member, result, IN_STREAM
                    yield from _admit_each(members, self._layer, self._policy)
                    return

    def copy(self, member: RawMember, data: Data, out: BinaryIO,
             on_bytes: Callable[[int], None] | None) -> None:
        if data is IN_STREAM:
            assert self._reader is not None
            self._reader.copy_data(member, out, on_bytes)
        elif data is SKIPPED:
            raise DataNotKept(f"the data of {member.name!r} was skipped as hidden")
        else:
            out.write(data)
            if on_bytes is not None:
                on_bytes(len(data))

    def close(self) -> None:
        """Stops the reading (when the flatten ends early) and closes the layer."""
        with self._changed:
            self._stopped = True
            self._items.clear()
            self._held = 0
            self._changed.notify_all()
            stream, self._stream = self._stream, None
        if stream is not None and self._handed_over:
            stream.close()  # handed over: ours to close; otherwise the thread closes it

    # -- the reading thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            self._read()
        except BaseException as exc:  # noqa: BLE001 - handed to the flatten, in order
            failed = _Batch()
            failed.add(("error", exc), 0)
            self._put(failed)

    def _read(self) -> None:
        stream = self._open()
        with self._changed:
            if self._stopped:
                stream.close()
                return
            self._stream = stream
        batch = _Batch()
        try:
            reader = TarReader(stream, layer=self._layer)
            members = iter(reader)
            for member in members:
                if self._stopped:
                    return  # the flatten ended; skipping hidden data may not call _put for long
                result = admit(member, layer=self._layer, policy=self._policy)
                data: Data = SKIPPED
                if isinstance(result, Admitted) and result.kind is Kind.FILE \
                        and member.type == REGULAR and not self._hidden(result.path):
                    if self._held + batch.size + member.size > self._limit:
                        # Enough held: the flatten reads on from this member itself.
                        batch.add(("rest", member, result, members, reader), 0)
                        self._put(batch)
                        return
                    data = _read_data(reader, member)
                batch.add(("member", member, result, data), len(data or b""))
                if batch.full() and not self._put(batch):
                    return
            batch.add(("end",), 0)
            self._put(batch)
        except BaseException as exc:  # noqa: BLE001 - handed to the flatten, in order
            batch.add(("error", exc), 0)  # after the members read before it
            self._put(batch)
        finally:
            with self._changed:
                handed_over = self._handed_over
                if not handed_over:
                    self._stream = None
            if not handed_over:
                stream.close()

    def _put(self, batch: _Batch) -> bool:
        """Hands the batch to the flatten (and empties it); False once the flatten has
        stopped reading."""
        items, size = batch.take()
        with self._changed:
            if self._stopped:
                return False
            if items:
                self._items.append((items, size))
                self._handed_over = items[-1][0] == "rest"
                self._held += size
                self._changed.notify_all()
            return True


LayerSource = LayerInline | LayerAhead


def _admit_each(members: Iterable[RawMember], layer: str, policy: MemberPolicy
                ) -> Iterator[tuple[RawMember, Result, Data]]:
    """Members read by the flatten's thread: the member rules applied, data in the stream."""
    for member in members:
        yield member, admit(member, layer=layer, policy=policy), IN_STREAM


class _Batch:
    """Members handed over together: one lock round per batch, not per member."""

    MEMBERS = 256
    BYTES = 1 << 20

    def __init__(self) -> None:
        self.items: list[tuple] = []
        self.size = 0

    def add(self, item: tuple, size: int) -> None:
        self.items.append(item)
        self.size += size

    def full(self) -> bool:
        return len(self.items) >= self.MEMBERS or self.size >= self.BYTES

    def take(self) -> tuple[list[tuple], int]:
        taken = self.items, self.size
        self.items, self.size = [], 0
        return taken


def _read_data(reader: TarReader, member: RawMember) -> bytes:
    parts: list[bytes] = []
    reader.copy_data(member, _Parts(parts))
    return b"".join(parts)


class _Parts:
    def __init__(self, parts: list[bytes]) -> None:
        self._parts = parts

    def write(self, data: bytes | memoryview) -> int:
        self._parts.append(bytes(data))
        return len(data)

