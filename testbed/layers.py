"""Builders for crafted image layers (tar, tar+gzip, tar+zstd): tests, bench, demo.

`layer(file("etc/passwd", b"root:x:0:0"), whiteout("tmp/old"), compression="zstd")`
returns the blob bytes. Entries use the standard tarfile module; `raw_member` writes
headers tarfile refuses to write (".." names, NUL bytes, huge PAX headers, base-256).
"""

from __future__ import annotations

import gzip
import hashlib
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import zstandard

BLOCK = 512

__all__ = [
    "Member", "file", "dir", "symlink", "hardlink", "whiteout", "opaque", "device", "fifo",
    "raw_member", "tar_bytes", "compress", "layer", "executables", "digest", "write_blob",
]


@dataclass(frozen=True)
class Member:
    """One tar member to write: a TarInfo and its data."""

    info: tarfile.TarInfo
    data: bytes = b""


def _info(path: str, kind: bytes, *, mode: int, mtime: int, uid: int, gid: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.uid, info.gid = uid, gid
    return info


def file(path: str, data: bytes = b"", mode: int = 0o644, *, mtime: int = 0, uid: int = 0,
         gid: int = 0) -> Member:
    info = _info(path, tarfile.REGTYPE, mode=mode, mtime=mtime, uid=uid, gid=gid)
    info.size = len(data)
    return Member(info, data)


def dir(path: str, mode: int = 0o755, *, mtime: int = 0, uid: int = 0,  # noqa: A001
        gid: int = 0) -> Member:
    return Member(_info(path, tarfile.DIRTYPE, mode=mode, mtime=mtime, uid=uid, gid=gid))


def symlink(path: str, target: str, *, mtime: int = 0) -> Member:
    info = _info(path, tarfile.SYMTYPE, mode=0o777, mtime=mtime, uid=0, gid=0)
    info.linkname = target
    return Member(info)


def hardlink(path: str, target: str, *, mode: int = 0o644) -> Member:
    info = _info(path, tarfile.LNKTYPE, mode=mode, mtime=0, uid=0, gid=0)
    info.linkname = target
    return Member(info)


def whiteout(path: str) -> Member:
    """Hides `path` (file or directory) of the lower layers."""
    parent, _, name = path.rstrip("/").rpartition("/")
    return file(f"{parent}/.wh.{name}" if parent else f".wh.{name}")


def opaque(directory: str) -> Member:
    """Hides every lower-layer entry below `directory` (it stays itself)."""
    directory = directory.strip("/")
    return file(f"{directory}/.wh..wh..opq" if directory else ".wh..wh..opq")


def device(path: str, *, block: bool = False) -> Member:
    info = _info(path, tarfile.BLKTYPE if block else tarfile.CHRTYPE, mode=0o660, mtime=0,
                 uid=0, gid=0)
    info.devmajor, info.devminor = 1, 3
    return Member(info)


def fifo(path: str) -> Member:
    return Member(_info(path, tarfile.FIFOTYPE, mode=0o644, mtime=0, uid=0, gid=0))


def raw_member(
    name: str | bytes,
    *,
    type: bytes = b"0",  # noqa: A002 - the tar field's name
    data: bytes = b"",
    linkname: str | bytes = b"",
    mode: int = 0o644,
    mtime: int = 0,
    pax: dict[str, str | bytes] | None = None,
    base256: bool = False,
    checksum_delta: int = 0,
) -> bytes:
    """Header(s) plus padded data, exactly as given: no validation at all.

    `pax` adds a PAX 'x' header before the member; `base256` writes size and mtime in
    GNU base-256; `checksum_delta` corrupts the checksum.
    """
    out = b""
    if pax is not None:
        records = b"".join(_pax_record(key.encode(), value if isinstance(value, bytes)
                                       else value.encode()) for key, value in pax.items())
        out += raw_member("PaxHeader", type=b"x", data=records)
    name_bytes = name.encode() if isinstance(name, str) else name
    link_bytes = linkname.encode() if isinstance(linkname, str) else linkname
    header = bytearray(BLOCK)
    header[0 : min(len(name_bytes), 100)] = name_bytes[:100]
    header[100:108] = b"%07o\0" % mode
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    if base256:
        header[124:136] = b"\x80" + len(data).to_bytes(11, "big")
        header[136:148] = b"\x80" + mtime.to_bytes(11, "big")
    else:
        header[124:136] = b"%011o\0" % len(data)
        header[136:148] = b"%011o\0" % mtime
    header[148:156] = b" " * 8
    header[156:157] = type
    header[157 : 157 + min(len(link_bytes), 100)] = link_bytes[:100]
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\0 " % (sum(header) + checksum_delta)
    return out + bytes(header) + _padded(data)


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def tar_bytes(*entries: Member | bytes, tar_format: Literal[0, 1, 2] = tarfile.PAX_FORMAT,
              end: bool = True) -> bytes:
    """An uncompressed tar of the entries (raw bytes are inserted as they are)."""
    chunks = []
    for entry in entries:
        if isinstance(entry, bytes):
            chunks.append(entry)
        else:
            chunks.append(entry.info.tobuf(tar_format, "utf-8", "surrogateescape"))
            chunks.append(_padded(entry.data))
    if end:
        chunks.append(bytes(2 * BLOCK))
    return b"".join(chunks)


def compress(data: bytes, compression: str) -> bytes:
    """"gzip", "zstd" or "none"."""
    if compression == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(data)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}")


def layer(*entries: Member | bytes, compression: str = "gzip",
          tar_format: Literal[0, 1, 2] = tarfile.PAX_FORMAT) -> bytes:
    """A layer blob holding the entries in order."""
    return compress(tar_bytes(*entries, tar_format=tar_format), compression)


def executables(files: dict[str, bytes], compression: str = "gzip") -> bytes:
    """A layer of executable files (mode 0755), `path -> bytes`."""
    return layer(*(file(path, data, 0o755) for path, data in files.items()),
                 compression=compression)


def digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def write_blob(directory: Path, blob: bytes) -> Path:
    """Writes the blob under its digest's hex in `directory`; returns the path."""
    path = Path(directory) / digest(blob).split(":", 1)[1]
    path.write_bytes(blob)
    return path
