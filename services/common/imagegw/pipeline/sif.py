"""Writes a SIF file (Singularity Image Format) wrapping a squashfs image, in pure Python.

The layout, from the SIF specification as sylabs/sif implements it (little-endian,
packed structures): a 128-byte global header at offset 0; a table of 48 descriptors of
585 bytes each at offset 4096; the data section right after the table, each object at
the next multiple of 4096. Ours holds one object: the squashfs as the primary system
partition (fs type squashfs, partition type primary system, the image's architecture).
The reader (with its bounds checks) is imagegw.artifacts.content.extract_sif_squashfs.
"""

from __future__ import annotations

import os
import shutil
import struct
import uuid
from pathlib import Path
from typing import BinaryIO

__all__ = ["SIF_ARCHITECTURES", "sif_header", "write_sif"]

LAUNCH_SCRIPT = b"#!/usr/bin/env run-singularity\n"
MAGIC = b"SIF_MAGIC\0"
VERSION = b"01\0"
DESCRIPTORS_OFFSET = 4096
DESCRIPTOR_COUNT = 48
ALIGNMENT = 4096
#: The header: launch[32] magic[10] version[3] arch[3] uuid[16], then ctime, mtime,
#: free descriptors, total descriptors, descriptor offset and size, data offset and size.
HEADER = struct.Struct("<32s10s3s3s16s8q")
#: A descriptor: data type, used, id, group id, linked id, offset, size, size with
#: padding, ctime, mtime, uid, gid, name[128], type-specific extra[384].
DESCRIPTOR = struct.Struct("<i?IIIqqqqqqq128s384s")
#: The extra of a partition descriptor: fs type, partition type, architecture.
PARTITION = struct.Struct("<ii3s")
DATA_PARTITION = 0x4004
FS_SQUASHFS = 1
PART_PRIMARY_SYSTEM = 2
GROUP_MASK = 0xF0000000
DEFAULT_GROUP = 1
#: GOARCH names (as in OCI platforms) -> SIF's architecture codes.
SIF_ARCHITECTURES = {
    "386": b"01\0", "amd64": b"02\0", "arm": b"03\0", "arm64": b"04\0", "ppc64": b"05\0",
    "ppc64le": b"06\0", "mips": b"07\0", "mipsle": b"08\0", "mips64": b"09\0",
    "mips64le": b"10\0", "s390x": b"11\0", "riscv64": b"12\0", "loong64": b"13\0",
}
UNKNOWN_ARCHITECTURE = b"00\0"
_COPY_CHUNK = 64 << 20

assert HEADER.size == 128 and DESCRIPTOR.size == 585


def data_offset() -> int:
    """Where the squashfs starts: the first 4096 boundary after the descriptor table."""
    end = DESCRIPTORS_OFFSET + DESCRIPTOR_COUNT * DESCRIPTOR.size
    return -(-end // ALIGNMENT) * ALIGNMENT


def sif_header(squashfs_size: int, *, architecture: str, identity: str, created: int) -> bytes:
    """Everything before the squashfs: header, descriptor table, padding.

    `identity` (the image id) makes the SIF's UUID, `created` its times: the same
    squashfs and arguments always give the same bytes."""
    arch = SIF_ARCHITECTURES.get(architecture, UNKNOWN_ARCHITECTURE)
    table_size = DESCRIPTOR_COUNT * DESCRIPTOR.size
    start = DESCRIPTORS_OFFSET + table_size
    offset = data_offset()
    padded = offset - start + squashfs_size
    header = HEADER.pack(
        LAUNCH_SCRIPT, MAGIC, VERSION, arch,
        uuid.uuid5(uuid.NAMESPACE_URL, f"imagegw:{identity}").bytes,
        created, created, DESCRIPTOR_COUNT - 1, DESCRIPTOR_COUNT, DESCRIPTORS_OFFSET,
        table_size, start, padded,
    )
    partition = DESCRIPTOR.pack(
        DATA_PARTITION, True, 1, DEFAULT_GROUP | GROUP_MASK, 0, offset, squashfs_size, padded,
        created, created, 0, 0, b"", PARTITION.pack(FS_SQUASHFS, PART_PRIMARY_SYSTEM, arch),
    )
    table = partition + bytes(DESCRIPTOR.size * (DESCRIPTOR_COUNT - 1))
    return (header + bytes(DESCRIPTORS_OFFSET - HEADER.size) + table
            + bytes(offset - start))


def write_sif(squashfs: Path, output: Path, *, architecture: str, identity: str,
              created: int = 0) -> None:
    """Writes `output`: the SIF holding `squashfs` (copied, by reflink where the file
    system can) as its primary system partition."""
    size = Path(squashfs).stat().st_size
    with open(squashfs, "rb") as source, open(output, "wb") as out:
        out.write(sif_header(size, architecture=architecture, identity=identity,
                             created=created))
        out.flush()
        _copy(source, out, size)


def _copy(source: BinaryIO, out: BinaryIO, size: int) -> None:
    remaining = size
    try:
        while remaining:
            copied = os.copy_file_range(source.fileno(), out.fileno(),
                                        min(remaining, _COPY_CHUNK))
            if copied == 0:
                raise OSError("the squashfs file ended early")
            remaining -= copied
    except OSError:
        if remaining != size:
            raise
        shutil.copyfileobj(source, out, _COPY_CHUNK)
