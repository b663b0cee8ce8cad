"""A fast raw tar reader and a canonical tar writer, for the flattening data path.

The reader parses 512-byte headers itself (ustar, GNU long names, PAX) and lets the
caller skip or copy each member's data in 1 MiB chunks; the writer emits our own clean
ustar/PAX headers, so no header of a (hostile) layer is ever passed through.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from imagegw.domain.errors import ContentRejected

BLOCK = 512
CHUNK = 1 << 20
MAX_EXTENSION_BYTES = 1 << 20
ZERO_BLOCK = bytes(BLOCK)

REGULAR = "0"
HARDLINK = "1"
SYMLINK = "2"
CHARDEV = "3"
BLOCKDEV = "4"
DIRECTORY = "5"
FIFO = "6"
SPARSE = "S"

# Types whose size field says nothing about data in the archive.
_HEADER_ONLY = frozenset("123456")
_USTAR_MAGIC = b"ustar\x00"
_USTAR_MAX_NUMBER = 8**11 - 1

__all__ = ["DataSink", "RawMember", "TarReader", "TarWriter", "BLOCK", "CHUNK"]


class DataSink(Protocol):
    """Where copy_data writes a member's data: a file, or anything that takes bytes."""

    def write(self, data: memoryview, /) -> object: ...


@dataclass(slots=True)
class RawMember:
    """One logical member as the archive states it (extension headers applied)."""

    name: str
    type: str
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    linkname: str
    #: Position among the logical members of the archive, from 0.
    ordinal: int
    #: Offset of the member's data in the tar stream.
    offset: int


class TarReader:
    """Iterates the members of a tar stream; data not copied is skipped."""

    def __init__(self, stream: BinaryIO, *, layer: str) -> None:
        self._stream = stream
        self._layer = layer
        self._buf = b""
        self._pos = 0
        self._offset = 0  # stream offset of self._pos
        self._data_left = 0  # unread data bytes of the current member
        self._padding = 0
        self._ordinal = 0

    def __iter__(self) -> Iterator[RawMember]:
        while True:
            self._skip(self._data_left + self._padding)
            self._data_left = self._padding = 0
            member = self._next_member()
            if member is None:
                return
            yield member

    def copy_data(
        self, member: RawMember, out: DataSink, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        """Writes the current member's data (exactly member.size bytes) to `out`."""
        if self._data_left != member.size:
            raise RuntimeError(f"data of {member.name!r} is not the next thing in the stream")
        left = member.size
        while left:
            if self._pos >= len(self._buf):
                self._fill_chunk()
            take = min(left, len(self._buf) - self._pos)
            out.write(memoryview(self._buf)[self._pos : self._pos + take])
            self._pos += take
            self._offset += take
            left -= take
            self._data_left = left
            if on_bytes is not None:
                on_bytes(take)

    # -- stream plumbing ------------------------------------------------------------

    def _fill_chunk(self) -> None:
        data = self._stream.read(CHUNK)
        if not data:
            raise ContentRejected(
                f"layer {self._layer} ends in the middle of a tar member",
                hint="the layer is truncated or corrupt",
            )
        self._buf = data
        self._pos = 0

    def _take(self, count: int) -> bytes | None:
        """Exactly `count` bytes; None at a clean end of stream."""
        end = self._pos + count
        if end <= len(self._buf):
            data = self._buf[self._pos : end]
            self._pos = end
            self._offset += count
            return data
        parts = [self._buf[self._pos :]]
        have = len(parts[0])
        while have < count:
            more = self._stream.read(max(CHUNK, count - have))
            if not more:
                if have == 0:
                    return None
                raise ContentRejected(
                    f"layer {self._layer} ends in the middle of a tar header",
                    hint="the layer is truncated or corrupt",
                )
            parts.append(more)
            have += len(more)
        joined = b"".join(parts)
        self._buf = joined
        self._pos = count
        self._offset += count
        return joined[:count]

    def _skip(self, count: int) -> None:
        if not count:
            return
        self._offset += count
        avail = len(self._buf) - self._pos
        if count <= avail:
            self._pos += count
            return
        count -= avail
        self._buf, self._pos = b"", 0
        while count:
            data = self._stream.read(CHUNK)
            if not data:
                raise ContentRejected(
                    f"layer {self._layer} ends in the middle of a tar member",
                    hint="the layer is truncated or corrupt",
                )
            if len(data) > count:
                self._buf, self._pos = data, count
                return
            count -= len(data)

    def _take_extension(self, size: int, offset: int, what: str) -> bytes:
        if size < 0:
            # A negative size would move the reader backwards (and read the same header
            # forever): refused, like any other impossible header.
            raise ContentRejected(
                f"layer {self._layer} has a {what} header with a negative size at offset "
                f"{offset}",
                hint="the layer is hostile or corrupt",
            )
        if size > MAX_EXTENSION_BYTES:
            raise ContentRejected(
                f"layer {self._layer} has a {size}-byte {what} header "
                f"(limit {MAX_EXTENSION_BYTES})",
                hint="the layer is hostile or corrupt",
            )
        data = self._take(_padded(size))
        if data is None:
            raise ContentRejected(f"layer {self._layer} ends inside a {what} header")
        return data[:size]

    # -- headers --------------------------------------------------------------------

    def _next_member(self) -> RawMember | None:
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            header_offset = self._offset
            block = self._take(BLOCK)
            if block is None or block == ZERO_BLOCK:
                return None  # end of archive: a zero block, or EOF
            fields = _parse_header(block, self._layer, header_offset)
            kind = fields.type
            if kind == "x":
                pax.update(_parse_pax(self._take_extension(fields.size, header_offset, "PAX"), self._layer))
            elif kind == "g":
                # Global PAX headers are ignored, as containerd does.
                self._take_extension(fields.size, header_offset, "PAX global")
            elif kind == "L":
                long_name = _cstring(self._take_extension(fields.size, header_offset, "GNU long name"))
            elif kind == "K":
                long_link = _cstring(self._take_extension(fields.size, header_offset, "GNU long link"))
            else:
                break
        _apply_extensions(fields, pax, long_name, long_link)
        data_size = 0 if fields.type in _HEADER_ONLY else fields.size
        if data_size < 0:
            raise ContentRejected(
                f"layer {self._layer}: member {fields.name!r} has a negative size"
            )
        self._data_left = data_size
        self._padding = _padded(data_size) - data_size
        fields.size = data_size
        fields.ordinal = self._ordinal
        fields.offset = self._offset
        self._ordinal += 1
        return fields


def _byte_sum(block: bytes | bytearray) -> int:
    """sum(block) of a 512-byte block, in C: Adler-32's first half over two 256-byte
    halves (each sum is at most 65280, below Adler's modulus 65521, so it is exact)."""
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def _cstring(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes, layer: str, offset: int) -> int:
    if field[-1] in _NUMBER_ENDS and 0x30 <= field[0] <= 0x37:
        # The usual form: zero-padded octal digits and one NUL or space.
        try:
            return int(field[:-1], 8)
        except ValueError:
            pass
    first = field[0]
    if first == 0x80:
        return int.from_bytes(field[1:], "big")
    if first == 0xFF:
        return int.from_bytes(field, "big", signed=True)
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise ContentRejected(
            f"layer {layer} has a tar header with a bad number at offset {offset}",
            hint="the layer is corrupt",
        ) from None


_NUMBER_ENDS = frozenset(b"\0 ")


def _parse_header(block: bytes, layer: str, offset: int) -> RawMember:
    stored = _number(block[148:156], layer, offset)
    unsigned = _byte_sum(block) - sum(block[148:156]) + 8 * 32
    if stored != unsigned and stored != unsigned - 2 * sum(b for b in block if b > 127):
        raise ContentRejected(
            f"layer {layer} has a tar header with a bad checksum at offset {offset}",
            hint="the layer is corrupt, or not a tar archive",
        )
    name = block[0:100].split(b"\0", 1)[0]
    if block[257:263] == _USTAR_MAGIC:
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    kind = chr(block[156]) if block[156] else REGULAR
    decoded = name.decode("utf-8", "surrogateescape")
    if block[156] == 0 and decoded.endswith("/"):
        kind = DIRECTORY  # old tars mark directories by a trailing slash only
    if kind == "7":
        kind = REGULAR  # contiguous file
    return RawMember(
        name=decoded,
        type=kind,
        mode=_number(block[100:108], layer, offset),
        uid=_number(block[108:116], layer, offset),
        gid=_number(block[116:124], layer, offset),
        size=_number(block[124:136], layer, offset),
        mtime=_number(block[136:148], layer, offset),
        linkname=block[157:257].split(b"\0", 1)[0].decode("utf-8", "surrogateescape"),
        ordinal=0,
        offset=0,
    )


def _parse_pax(data: bytes, layer: str) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            break  # some writers pad the record block with NULs
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            length = 0
        end = pos + length
        if space < 0 or length <= 0 or end > len(data) or data[end - 1 : end] != b"\n":
            raise ContentRejected(
                f"layer {layer} has a malformed PAX header", hint="the layer is corrupt"
            )
        key, sep, value = data[space + 1 : end - 1].partition(b"=")
        if not sep:
            raise ContentRejected(f"layer {layer} has a malformed PAX record")
        records[key.decode("utf-8", "surrogateescape")] = value.decode(
            "utf-8", "surrogateescape"
        )
        pos = end
    return records


def _apply_extensions(
    member: RawMember, pax: dict[str, str], long_name: str | None, long_link: str | None
) -> None:
    if long_name is not None:
        member.name = long_name
        if member.type == REGULAR and long_name.endswith("/"):
            member.type = DIRECTORY
    if long_link is not None:
        member.linkname = long_link
    if "path" in pax:
        member.name = pax["path"]
    if "linkpath" in pax:
        member.linkname = pax["linkpath"]
    for key in ("size", "uid", "gid", "mtime"):
        if key in pax:
            try:
                value = int(pax[key].split(".", 1)[0])
            except ValueError:
                raise ContentRejected(
                    f"member {member.name!r} has a bad PAX {key} {pax[key]!r}"
                ) from None
            setattr(member, key, value)
    if any(key.startswith("GNU.sparse.") for key in pax):
        member.type = SPARSE  # data is a sparse map, not the file's bytes


class TarWriter:
    """Writes a canonical tar: our own headers, uid/gid 0, no pass-through."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def directory(self, path: str, *, mode: int, mtime: int) -> None:
        self._out.write(_header(path, DIRECTORY, mode=mode, mtime=mtime))

    def symlink(self, path: str, target: str, *, mtime: int) -> None:
        self._out.write(_header(path, SYMLINK, mode=0o777, mtime=mtime, linkname=target))

    def hardlink(self, path: str, target: str, *, mode: int, mtime: int) -> None:
        self._out.write(_header(path, HARDLINK, mode=mode, mtime=mtime, linkname=target))

    def file(
        self, path: str, *, mode: int, mtime: int, size: int, copy: Callable[[BinaryIO], None]
    ) -> None:
        """Writes the header, lets `copy` write exactly `size` bytes, then pads."""
        self._out.write(_header(path, REGULAR, mode=mode, mtime=mtime, size=size))
        copy(self._out)
        padding = _padded(size) - size
        if padding:
            self._out.write(ZERO_BLOCK[:padding])

    def close(self) -> None:
        self._out.write(ZERO_BLOCK * 2)


def _header(
    path: str, kind: str, *, mode: int, mtime: int, size: int = 0, linkname: str = ""
) -> bytes:
    name = path.encode("utf-8", "surrogateescape")
    link = linkname.encode("utf-8", "surrogateescape")
    pax: dict[bytes, bytes] = {}
    split = _split_ustar_name(name)
    if split is None or not name.isascii():
        pax[b"path"] = name
        split = (b"", name[:100])
    if len(link) > 100 or not link.isascii():
        pax[b"linkpath"] = link
    if size > _USTAR_MAX_NUMBER:
        pax[b"size"] = str(size).encode()
    mtime = min(max(mtime, 0), _USTAR_MAX_NUMBER)
    block = _ustar_block(
        split, kind, mode=mode, mtime=mtime, size=0 if b"size" in pax else size, link=link[:100]
    )
    if not pax:
        return block
    records = b"".join(_pax_record(key, value) for key, value in pax.items())
    pax_block = _ustar_block((b"", b"PaxHeader"), "x", mode=0o644, mtime=mtime,
                             size=len(records), link=b"")
    return pax_block + records + ZERO_BLOCK[: _padded(len(records)) - len(records)] + block


def _split_ustar_name(name: bytes) -> tuple[bytes, bytes] | None:
    if len(name) <= 100:
        return b"", name
    cut = name.rfind(b"/", 0, 156)
    if 0 < cut < len(name) - 1 and len(name) - cut - 1 <= 100:
        return name[:cut], name[cut + 1 :]
    return None


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _ustar_block(
    name: tuple[bytes, bytes], kind: str, *, mode: int, mtime: int, size: int, link: bytes
) -> bytes:
    prefix, base = name
    block = bytearray(_USTAR_TEMPLATE)
    block[0 : len(base)] = base
    block[100:108] = b"%07o\0" % (mode & 0o7777)
    block[124:148] = b"%011o\0%011o\0" % (size, mtime)
    block[156] = ord(kind)
    if link:
        block[157 : 157 + len(link)] = link
    if prefix:
        block[345 : 345 + len(prefix)] = prefix
    block[148:156] = b"%06o\0 " % _byte_sum(block)
    return bytes(block)


def _template() -> bytes:
    """The fields every header we write shares: owner root:root (0:0), ustar magic,
    and a checksum field of spaces (as the checksum is computed)."""
    block = bytearray(BLOCK)
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[148:156] = b"        "
    block[257:265] = b"ustar\x0000"
    block[265:269] = b"root"
    block[297:301] = b"root"
    block[329:337] = b"0000000\0"
    block[337:345] = b"0000000\0"
    return bytes(block)


_USTAR_TEMPLATE = _template()
