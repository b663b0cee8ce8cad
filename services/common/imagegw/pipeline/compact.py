"""The compact layer index: one layer's index as one bytes object, not Python objects.

A `LayerIndex` costs about a kilobyte of Python objects per member; at a few hundred
thousand members that is the worker's memory. The compact form is what the compiled
flatten path produces and consumes (and what the blob cache keeps beside a layer); this
module is its definition and the pure-Python reference: `encode` and `decode` convert
to and from `LayerIndex`, and `scan_layer` indexes a decompressed layer into it (by the
compiled scanner when it is built, else by `flatten.index_layer`).

Layout, little-endian, strings as UTF-8 with surrogate escapes (as tarstream decodes):

    header   magic b"IGWIDX2\\0", u32 entries, u32 markers, u64 dropped,
             u32 length of the layer name, the layer name
    entries  (in member order) u8 kind, u16 path length, u16 link length, path, link,
             then LEB128 varints (7 bits a byte, low first, at most 10 bytes): mode,
             mtime (zigzag: 2n for n >= 0, -2n - 1 below), size, ordinal, and 1 + the
             offset of the member's data in the decompressed layer (0: unknown)
    markers  (in member order) u8 kind, u32 path length, path

The path is always ENTRY_HEAD (5) bytes from its entry's start: the compiled code keeps
pointers to paths and finds their entries from them (native/onepass.h decodes the
rest). Paths and links are at most members.MAX_NAME_BYTES (4096), which u16 holds. An
entry is about 20 bytes plus its path (issue 21: the layers' indexes are the names of
the tree the one pass verifies, in memory beside tar2sqfs at its peak).

Entry kinds: 0 file, 1 directory, 2 symlink, 3 hardlink. Marker kinds: 0 whiteout,
1 opaque. Paths are normalised member names (members.normalize_name); `link` is the
symlink target as stored or the normalised hardlink target, empty otherwise.
"""

from __future__ import annotations

import importlib
import re
import struct
from typing import BinaryIO

from .flatten import Entry, LayerIndex, index_layer
from .members import Kind, MarkerKind, MemberPolicy

__all__ = ["MAGIC", "ENTRY_HEAD", "ENTRY_KINDS", "MARKER_KINDS", "encode", "encode_entry",
           "encode_marker", "encode_header", "decode", "raw_entries", "paths", "layer_of",
           "scan_layer", "scan_layer_python"]

MAGIC = b"IGWIDX2\0"
ENTRY_HEAD = 5
ENTRY_KINDS: tuple[Kind, ...] = (Kind.FILE, Kind.DIR, Kind.SYMLINK, Kind.HARDLINK)
MARKER_KINDS: tuple[MarkerKind, ...] = (MarkerKind.WHITEOUT, MarkerKind.OPAQUE)

_HEADER = struct.Struct("<8sIIQI")
_ENTRY_HEAD = struct.Struct("<BHH")
_MAX_VARINT_BYTES = 10
_U64 = 1 << 64
_I64 = 1 << 63
_MARKER = struct.Struct("<BI")
_ENTRY_CODES = {kind: code for code, kind in enumerate(ENTRY_KINDS)}
_MARKER_CODES = {kind: code for code, kind in enumerate(MARKER_KINDS)}


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _varint(value: int) -> bytes:
    if not 0 <= value < _U64:
        raise struct.error("argument out of range")
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_entry(kind: int, mode: int, mtime: int, size: int, ordinal: int, offset: int,
                 path: bytes, link: bytes) -> bytes:
    """One entry's bytes (`kind` as its code in ENTRY_KINDS); struct.error when a field
    is out of its range, as the fixed-width layout before it raised."""
    if not -_I64 <= mtime < _I64 or not -1 <= offset < _I64 or mode >= 1 << 32:
        raise struct.error("argument out of range")
    zigzag = mtime << 1 if mtime >= 0 else (-mtime << 1) - 1
    return b"".join((_ENTRY_HEAD.pack(kind, len(path), len(link)), path, link, _varint(mode),
                     _varint(zigzag), _varint(size), _varint(ordinal), _varint(offset + 1)))


def encode_marker(kind: int, path: bytes) -> bytes:
    """One marker's bytes (`kind` as its code in MARKER_KINDS)."""
    return _MARKER.pack(kind, len(path)) + path


def encode_header(layer: bytes, entries: int, markers: int, dropped: int) -> bytes:
    """The header of an index of `entries` entries and `markers` markers; its entries
    (encode_entry) then its markers (encode_marker) follow it."""
    return _HEADER.pack(MAGIC, entries, markers, dropped, len(layer)) + layer


def encode(index: LayerIndex) -> bytes:
    """The compact form of `index`."""
    parts = [encode_header(_bytes(index.layer), len(index.entries), len(index.markers),
                           index.dropped)]
    for entry in index.entries:
        parts.append(encode_entry(_ENTRY_CODES[entry.kind], entry.mode, entry.mtime,
                                  entry.size, entry.ordinal, entry.offset,
                                  _bytes(entry.path), _bytes(entry.link)))
    for kind, marker_path in index.markers:
        parts.append(encode_marker(_MARKER_CODES[kind], _bytes(marker_path)))
    return b"".join(parts)


RawEntry = tuple[int, int, int, int, int, int, bytes, bytes]


class _Reader:
    """A cursor over an index's bytes; ValueError for anything past its end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, count: int) -> bytes:
        end = self.at + count
        if end > len(self.data):
            raise ValueError("a damaged compact layer index: cut short")
        chunk = self.data[self.at:end]
        self.at = end
        return chunk


#: An entry's five varints, each at most 10 bytes (found by the regex engine, not a
#: Python loop per byte: decode reads every entry of a layer).
_NUMBERS = re.compile(rb"([\x80-\xff]{0,%d}[\x00-\x7f])" % (_MAX_VARINT_BYTES - 1) * 5)


def _number(raw: bytes) -> int:
    value = 0
    for byte in reversed(raw):
        value = value << 7 | byte & 0x7F
    return value


def _header(reader: _Reader) -> tuple[int, int, int, bytes]:
    try:
        magic, entries, markers, dropped, layer_length = _HEADER.unpack_from(reader.data, 0)
    except struct.error:
        raise ValueError("not a compact layer index") from None
    if magic != MAGIC:
        raise ValueError("not a compact layer index")
    reader.at = _HEADER.size
    return entries, markers, dropped, reader.take(layer_length)


def _entries(reader: _Reader, count: int) -> list[RawEntry]:
    """The next `count` entries (one loop with its names local: decode reads a few
    hundred thousand)."""
    data, at, length = reader.data, reader.at, len(reader.data)
    head, match, number = _ENTRY_HEAD.unpack_from, _NUMBERS.match, _number
    entries: list[RawEntry] = []
    for _ in range(count):
        if at + ENTRY_HEAD > length:
            raise ValueError("a damaged compact layer index: an entry is cut short")
        code, path_length, link_length = head(data, at)
        link_at = at + ENTRY_HEAD + path_length
        end = link_at + link_length
        numbers = match(data, end) if end <= length else None
        if numbers is None:
            raise ValueError("a damaged compact layer index: an entry's path or numbers are "
                             "cut short, or a number is too long")
        mode, zigzag, size, ordinal, offset = [raw[0] if len(raw) == 1 else number(raw)
                                               for raw in numbers.groups()]
        if code >= len(ENTRY_KINDS):
            raise ValueError("a damaged compact layer index: an entry of unknown kind")
        if mode >= 1 << 32 or offset > _I64 or max(zigzag, size, ordinal) >= _U64:
            raise ValueError("a damaged compact layer index: a number out of range")
        mtime = -(zigzag >> 1) - 1 if zigzag & 1 else zigzag >> 1
        entries.append((code, mode, mtime, size, ordinal, offset - 1,
                        data[at + ENTRY_HEAD:link_at], data[link_at:end]))
        at = numbers.end()
    reader.at = at
    return entries


def raw_entries(data: bytes) -> list[RawEntry]:
    """(kind code, mode, mtime, size, ordinal, offset, path, link) of each entry of a
    compact index, paths as bytes, without building a LayerIndex; ValueError when
    the entries are damaged."""
    reader = _Reader(data)
    return _entries(reader, _header(reader)[0])


#: An entry's five varints, skipped (paths: what hides what needs no number).
_SKIP_NUMBERS = re.compile(rb"(?:[\x80-\xff]{0,%d}[\x00-\x7f]){5}" % (_MAX_VARINT_BYTES - 1))


def paths(data: bytes) -> tuple[list[tuple[Kind, str]], list[tuple[MarkerKind, str]]]:
    """The kind and path of each entry, and each marker, of a compact index: what
    decode gives without the numbers (skipped, not checked), at a fraction of its cost
    (inflate_ahead.HiddenPaths). ValueError when an entry is cut short."""
    reader = _Reader(data)
    count, markers = _header(reader)[:2]
    at, length = reader.at, len(data)
    head, skip = _ENTRY_HEAD.unpack_from, _SKIP_NUMBERS.match
    entries: list[tuple[Kind, str]] = []
    try:
        for _ in range(count):
            code, path_length, link_length = head(data, at)
            end = at + ENTRY_HEAD + path_length + link_length
            numbers = skip(data, end) if end <= length else None
            if numbers is None:
                raise ValueError("a damaged compact layer index: an entry is cut short")
            entries.append((ENTRY_KINDS[code],
                            _text(data[at + ENTRY_HEAD:at + ENTRY_HEAD + path_length])))
            at = numbers.end()
    except (struct.error, IndexError):
        raise ValueError("a damaged compact layer index: an entry is cut short or of "
                         "unknown kind") from None
    reader.at = at
    return entries, _markers(reader, markers)


def _markers(reader: _Reader, count: int) -> list[tuple[MarkerKind, str]]:
    markers = []
    for _ in range(count):
        code, path_length = _MARKER.unpack(reader.take(_MARKER.size))
        if code >= len(MARKER_KINDS):
            raise ValueError("a damaged compact layer index: a marker of unknown kind")
        markers.append((MARKER_KINDS[code], _text(reader.take(path_length))))
    return markers


def decode(data: bytes) -> LayerIndex:
    """The `LayerIndex` of a compact index; ValueError when `data` is not one."""
    reader = _Reader(data)
    entries, markers, dropped, layer = _header(reader)
    index = LayerIndex(layer=_text(layer), dropped=dropped)
    for code, mode, mtime, size, ordinal, offset, path, link in _entries(reader, entries):
        index.entries.append(Entry(_text(path), ENTRY_KINDS[code], mode, mtime, size,
                                   _text(link), ordinal, offset))
    index.markers.extend(_markers(reader, markers))
    if reader.at != len(data):
        raise ValueError("a compact layer index with trailing bytes")
    return index


def layer_of(data: bytes) -> str:
    """The layer a compact index names, from its header alone; ValueError when `data`
    does not start like a compact index (the rest is checked where it is decoded)."""
    try:
        magic, _, _, _, layer_length = _HEADER.unpack_from(data, 0)
    except struct.error:
        raise ValueError("not a compact layer index") from None
    if magic != MAGIC:
        raise ValueError("not a compact layer index")
    return _text(data[_HEADER.size:_HEADER.size + layer_length])


def scan_layer_python(stream: BinaryIO, *, layer: str, policy: MemberPolicy) -> bytes:
    """The reference scanner: `flatten.index_layer`, encoded."""
    return encode(index_layer(stream, layer=layer, policy=policy))


def scan_layer(stream: BinaryIO, *, layer: str, policy: MemberPolicy) -> bytes:
    """The compact index of a decompressed layer (raises ContentRejected like
    `flatten.index_layer`); by the compiled scanner when it is built."""
    try:
        native = importlib.import_module(f"{__package__}.native_scan")
    except ImportError:
        return scan_layer_python(stream, layer=layer, policy=policy)
    result: bytes = native.scan_layer(stream, layer=layer, policy=policy)
    return result
