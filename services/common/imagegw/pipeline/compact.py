"""The compact layer index: one layer's index as one bytes object, not Python objects.

A `LayerIndex` costs about a kilobyte of Python objects per member; at a few hundred
thousand members that is the worker's memory. The compact form is what the compiled
flatten path produces and consumes (and what the blob cache keeps beside a layer); this
module is its definition and the pure-Python reference: `encode` and `decode` convert
to and from `LayerIndex`, and `scan_layer` indexes a decompressed layer into it (by the
compiled scanner when it is built, else by `flatten.index_layer`).

Layout, little-endian, strings as UTF-8 with surrogate escapes (as tarstream decodes):

    header   magic b"IGWIDX1\\0", u32 entries, u32 markers, u64 dropped,
             u32 length of the layer name, the layer name
    entries  (in member order) u8 kind, u32 mode, i64 mtime, u64 size, u64 ordinal,
             i64 offset of the member's data in the decompressed layer (-1: unknown),
             u32 path length, u32 link length, path, link
    markers  (in member order) u8 kind, u32 path length, path

Entry kinds: 0 file, 1 directory, 2 symlink, 3 hardlink. Marker kinds: 0 whiteout,
1 opaque. Paths are normalised member names (members.normalize_name); `link` is the
symlink target as stored or the normalised hardlink target, empty otherwise.
"""

from __future__ import annotations

import importlib
import struct
from typing import BinaryIO

from .flatten import Entry, LayerIndex, index_layer
from .members import Kind, MarkerKind, MemberPolicy

__all__ = ["MAGIC", "ENTRY_KINDS", "MARKER_KINDS", "encode", "decode", "layer_of",
           "scan_layer", "scan_layer_python"]

MAGIC = b"IGWIDX1\0"
ENTRY_KINDS: tuple[Kind, ...] = (Kind.FILE, Kind.DIR, Kind.SYMLINK, Kind.HARDLINK)
MARKER_KINDS: tuple[MarkerKind, ...] = (MarkerKind.WHITEOUT, MarkerKind.OPAQUE)

_HEADER = struct.Struct("<8sIIQI")
_ENTRY = struct.Struct("<BIqQQqII")
_MARKER = struct.Struct("<BI")
_ENTRY_CODES = {kind: code for code, kind in enumerate(ENTRY_KINDS)}
_MARKER_CODES = {kind: code for code, kind in enumerate(MARKER_KINDS)}


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def encode(index: LayerIndex) -> bytes:
    """The compact form of `index`."""
    layer = _bytes(index.layer)
    parts = [_HEADER.pack(MAGIC, len(index.entries), len(index.markers), index.dropped,
                          len(layer)), layer]
    for entry in index.entries:
        path, link = _bytes(entry.path), _bytes(entry.link)
        parts.append(_ENTRY.pack(_ENTRY_CODES[entry.kind], entry.mode, entry.mtime,
                                 entry.size, entry.ordinal, entry.offset, len(path),
                                 len(link)))
        parts += (path, link)
    for kind, marker_path in index.markers:
        path = _bytes(marker_path)
        parts.append(_MARKER.pack(_MARKER_CODES[kind], len(path)))
        parts.append(path)
    return b"".join(parts)


def decode(data: bytes) -> LayerIndex:
    """The `LayerIndex` of a compact index; ValueError when `data` is not one."""
    view = memoryview(data)
    try:
        magic, entries, markers, dropped, layer_length = _HEADER.unpack_from(view, 0)
        if magic != MAGIC:
            raise ValueError("not a compact layer index")
        offset = _HEADER.size
        index = LayerIndex(layer=_text(bytes(view[offset:offset + layer_length])),
                           dropped=dropped)
        offset += layer_length
        for _ in range(entries):
            code, mode, mtime, size, ordinal, data_offset, path_length, link_length = \
                _ENTRY.unpack_from(view, offset)
            offset += _ENTRY.size
            path = _text(bytes(view[offset:offset + path_length]))
            offset += path_length
            link = _text(bytes(view[offset:offset + link_length]))
            offset += link_length
            index.entries.append(Entry(path, ENTRY_KINDS[code], mode, mtime, size, link,
                                       ordinal, data_offset))
        for _ in range(markers):
            code, path_length = _MARKER.unpack_from(view, offset)
            offset += _MARKER.size
            index.markers.append((MARKER_KINDS[code],
                                  _text(bytes(view[offset:offset + path_length]))))
            offset += path_length
    except (struct.error, IndexError) as exc:
        raise ValueError(f"a damaged compact layer index: {exc}") from None
    if offset != len(view):
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
