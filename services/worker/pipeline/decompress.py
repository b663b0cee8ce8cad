"""Opens a layer blob as a stream of its decompressed tar, whatever the compression.

Owns format detection (gzip, zstd, plain tar by magic bytes), the decompressed-size
cap that stops gzip/zstd bombs, and turning truncated or corrupt data into ContentRejected.
gzip is inflated with ISA-L (PyPI `isal`, about twice as fast as CPython's zlib) when it is
installed, with zlib otherwise; both give the same bytes and the same errors here.
"""

from __future__ import annotations

import io
import logging
import os
import zlib
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

from imagegw.errors import ContentRejected

try:
    from isal import isal_zlib as _inflate_module
except ImportError:  # optional speed-up: zlib gives the same bytes
    _inflate_module = zlib  # type: ignore[assignment, unused-ignore]

log = logging.getLogger(__name__)

#: Which library inflates gzip layers ("isal" or "zlib").
GZIP_BACKEND = "zlib" if _inflate_module is zlib else "isal"
_INFLATE_ERRORS: tuple[type[BaseException], ...] = tuple(
    {zlib.error, getattr(_inflate_module, "error", zlib.error)}
)

READ_SIZE = 1 << 20
MAX_READ = 4 * READ_SIZE
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_SKIPPABLE_LOW = 0x184D2A50

__all__ = ["open_layer", "open_layer_stream", "LayerStream", "detect_format", "GZIP_BACKEND"]


def detect_format(head: bytes) -> str:
    """"gzip", "zstd" or "tar" from the first bytes of a blob."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "tar"


def open_layer(
    path: str | os.PathLike[str], *, max_uncompressed: int, layer: str | None = None
) -> BinaryIO:
    """A readable stream of the layer's tar; reads past `max_uncompressed` bytes fail.

    `layer` names the layer in errors (its digest); the file name is used otherwise.
    """
    name = layer or Path(path).name
    raw = open(path, "rb")  # noqa: SIM115 - owned and closed by the returned stream
    try:
        kind = detect_format(raw.read(4))
        raw.seek(0)
        if kind == "zstd":
            _check_zstd_framing(raw, name)
            raw.seek(0)
        stream = LayerStream(raw, kind, layer=name, max_uncompressed=max_uncompressed)
    except BaseException:
        raw.close()
        raise
    return cast(BinaryIO, stream)


def open_layer_stream(
    raw: BinaryIO, *, max_uncompressed: int, layer: str
) -> BinaryIO:
    """Like open_layer, over a stream that cannot seek (a download in progress).

    zstd framing is not walked here (it needs the whole file): a truncated zstd
    frame reads as a shorter layer, which the caller must catch by other means
    (the blob's digest, and open_layer's check when the layer is read again).
    """
    head = _read_head(raw, 4)
    kind = detect_format(head)
    stream = LayerStream(_Prefixed(head, raw), kind, layer=layer,
                         max_uncompressed=max_uncompressed)
    return cast(BinaryIO, stream)


def _read_head(raw: BinaryIO, count: int) -> bytes:
    head = b""
    while len(head) < count:
        more = raw.read(count - len(head))
        if not more:
            break
        head += more
    return head


class _Prefixed:
    """`head` followed by the rest of `raw` (a peek for streams that cannot seek)."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self._head = head
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._raw.read(size)
        if size < 0:
            head, self._head = self._head, b""
            return head + self._raw.read()
        head, self._head = self._head[:size], self._head[size:]
        return head

    def close(self) -> None:
        self._raw.close()


class LayerStream(io.RawIOBase):
    """Decompressed bytes of one layer, counted against a cap."""

    def __init__(self, raw: BinaryIO, kind: str, *, layer: str, max_uncompressed: int) -> None:
        super().__init__()
        self.kind = kind
        self.layer = layer
        self.max_uncompressed = max_uncompressed
        self.bytes_out = 0
        self._raw = raw
        self._source: _Source
        if kind == "gzip":
            self._source = _GzipSource(raw, layer)
        elif kind == "zstd":
            self._source = _ZstdSource(raw, layer)
        else:
            self._source = _PlainSource(raw)

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to `size` bytes (at most MAX_READ, so one call never inflates a bomb)."""
        if size is None or size < 0:
            return self.readall()
        data = self._source.read(min(size, MAX_READ))
        self.bytes_out += len(data)
        if self.bytes_out > self.max_uncompressed:
            raise ContentRejected(
                f"layer {self.layer} decompresses beyond the {self.max_uncompressed}-byte cap",
                hint="the image is larger than the site allows, or the layer is a "
                "decompression bomb",
            )
        return data

    def readall(self) -> bytes:
        return b"".join(iter(lambda: self.read(MAX_READ), b""))

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._source.close()
            self._raw.close()
        super().close()


class _Source:
    def read(self, size: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        """Releases decompressor state; the file is closed by LayerStream."""


class _PlainSource(_Source):
    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def read(self, size: int) -> bytes:
        return self._raw.read(size)


class _GzipSource(_Source):
    """gzip with concatenated members and trailing zero padding (as gzip(1) accepts)."""

    def __init__(self, raw: BinaryIO, layer: str) -> None:
        self._raw = raw
        self._layer = layer
        self._inflate = _inflate_module.decompressobj(wbits=31)
        self._pending = b""
        self._done = False

    def read(self, size: int) -> bytes:
        while not self._done:
            data = self._next_input()
            try:
                out = self._inflate.decompress(data, size)
            except _INFLATE_ERRORS as exc:
                raise ContentRejected(
                    f"layer {self._layer} is not valid gzip: {exc}",
                    hint="the blob is corrupt; pull the image again",
                ) from exc
            self._pending = self._inflate.unconsumed_tail
            if self._inflate.eof:
                self._start_next_member()
            elif not data and not out:
                raise ContentRejected(
                    f"layer {self._layer} ends in the middle of its gzip data",
                    hint="the blob is truncated; pull the image again",
                )
            if out:
                return out
        return b""

    def _next_input(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        return self._raw.read(READ_SIZE)

    def _start_next_member(self) -> None:
        rest = self._inflate.unused_data.lstrip(b"\0")
        while not rest:
            more = self._raw.read(READ_SIZE)
            if not more:
                self._done = True
                return
            rest = more.lstrip(b"\0")
        if not rest.startswith(GZIP_MAGIC[: len(rest)]):
            raise ContentRejected(
                f"layer {self._layer} has trailing data after its gzip stream",
                hint="the blob is corrupt; pull the image again",
            )
        self._inflate = _inflate_module.decompressobj(wbits=31)
        self._pending = rest


class _ZstdSource(_Source):
    def __init__(self, raw: BinaryIO, layer: str) -> None:
        self._layer = layer
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=READ_SIZE, read_across_frames=True, closefd=False
        )

    def read(self, size: int) -> bytes:
        try:
            return self._reader.read(size)
        except zstandard.ZstdError as exc:
            raise ContentRejected(
                f"layer {self._layer} is not valid zstd: {exc}",
                hint="the blob is corrupt; pull the image again",
            ) from exc

    def close(self) -> None:
        self._reader.close()


def _check_zstd_framing(raw: BinaryIO, layer: str) -> None:
    """Walks frame and block headers to the end: zstandard's reader ends silently on
    a truncated frame, so completeness is checked here (cheap: headers only)."""
    size = os.fstat(raw.fileno()).st_size
    pos = 0
    while pos < size:
        raw.seek(pos)
        magic = int.from_bytes(_read_exact(raw, 4, layer), "little")
        if magic & 0xFFFFFFF0 == _ZSTD_SKIPPABLE_LOW:
            pos += 8 + int.from_bytes(_read_exact(raw, 4, layer), "little")
        elif magic == int.from_bytes(ZSTD_MAGIC, "little"):
            pos = _skip_zstd_frame(raw, pos + 4, layer)
        else:
            raise ContentRejected(
                f"layer {layer} has data that is not a zstd frame at byte {pos}",
                hint="the blob is corrupt; pull the image again",
            )
    if pos != size:
        _truncated(layer)


def _skip_zstd_frame(raw: BinaryIO, pos: int, layer: str) -> int:
    descriptor = _read_exact(raw, 1, layer)[0]
    fcs_flag = descriptor >> 6
    single_segment = descriptor >> 5 & 1
    checksum = descriptor >> 2 & 1
    dict_size = (0, 1, 2, 4)[descriptor & 3]
    fcs_size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    pos += 1 + (0 if single_segment else 1) + dict_size + fcs_size
    while True:
        raw.seek(pos)
        header = int.from_bytes(_read_exact(raw, 3, layer), "little")
        last, block_type, block_size = header & 1, header >> 1 & 3, header >> 3
        if block_type == 3:
            raise ContentRejected(f"layer {layer} has a corrupt zstd block at byte {pos}")
        pos += 3 + (1 if block_type == 1 else block_size)
        if last:
            return pos + 4 * checksum


def _read_exact(raw: BinaryIO, count: int, layer: str) -> bytes:
    data = raw.read(count)
    if len(data) != count:
        _truncated(layer)
    return data


def _truncated(layer: str) -> None:
    raise ContentRejected(
        f"layer {layer} ends in the middle of its zstd data",
        hint="the blob is truncated; pull the image again",
    )
