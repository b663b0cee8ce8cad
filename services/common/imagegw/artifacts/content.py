"""What an image artifact may contain, and the checks that it is what it says.

Owns the media types and annotation keys of image artifacts, the squashfs check
(magic, then `unsquashfs -s`), the extraction of the primary squashfs partition
from a SIF file (a hostile input: every offset is bounds-checked), and reading
runtime metadata from an artifact's config blob or annotations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import struct
import subprocess
from collections.abc import Mapping
from pathlib import Path

from imagegw.domain.errors import ContentRejected, ConversionFailed
from imagegw.domain.model import ImageMetadata
from imagegw.registry.manifest import parse_image_config

log = logging.getLogger(__name__)

#: A squashfs file, as Shifter mounts it.
SQUASHFS_MEDIA_TYPE = "application/vnd.imagegw.squashfs"
#: A SIF file (Apptainer/SingularityCE push this layer type to OCI registries).
SIF_MEDIA_TYPE = "application/vnd.sylabs.sif.layer.v1.sif"
#: Shifter's meta file, the second layer of a shared conversion.
META_MEDIA_TYPE = "application/vnd.imagegw.meta.v1+text"
#: Our config blob: an OCI image config document (only its "config" object is used).
CONFIG_MEDIA_TYPE = "application/vnd.imagegw.image.config.v1+json"
#: Config media types whose JSON we read for Env, Entrypoint, Cmd, WorkingDir, User, Labels.
METADATA_CONFIG_TYPES = (
    CONFIG_MEDIA_TYPE,
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
)
IMAGE_LAYER_TYPES = (SQUASHFS_MEDIA_TYPE, SIF_MEDIA_TYPE)

#: Manifest annotation holding the runtime config as JSON ({"Env": [...], "Cmd": [...]}),
#: used when the config blob carries none.
ANNOTATION_RUNTIME_CONFIG = "io.imagegw.image.config"

SQUASHFS_MAGIC = b"hsqs"
#: The squashfs superblock up to `bytes_used`: magic, ..., version major, ..., bytes_used.
_SUPERBLOCK = struct.Struct("<4s24xH10xQ")
SIF_MAGIC = b"SIF_MAGIC\0"
#: Seconds `unsquashfs -s` may take to read a superblock.
UNSQUASHFS_TIMEOUT = 60.0
_COPY_CHUNK = 4 * 1024 * 1024

# SIF layout (little-endian, packed): a 128-byte global header, then descriptors.
_SIF_HEADER = struct.Struct("<32s10s3s3s16s8q")
_SIF_DESCRIPTOR = struct.Struct("<i?IIIqqqqqqq128s384s")
_SIF_DATA_PARTITION = 0x4004
_SIF_FS_SQUASHFS = 1
_SIF_PART_PRIMARY_SYSTEM = 2
_SIF_MAX_DESCRIPTORS = 4096


def check_squashfs(path: Path) -> None:
    """Raises ContentRejected unless `path` is a squashfs file `unsquashfs` can read."""
    with open(path, "rb") as handle:
        superblock = handle.read(_SUPERBLOCK.size)
    magic = superblock[:len(SQUASHFS_MAGIC)]
    if magic != SQUASHFS_MAGIC or len(superblock) < _SUPERBLOCK.size:
        raise ContentRejected(
            f"the artifact's image layer is not a squashfs file (starts with {magic!r})",
            hint=f"push a squashfs file with media type {SQUASHFS_MEDIA_TYPE}",
        )
    major, bytes_used = _SUPERBLOCK.unpack(superblock)[1:]
    if major != 4:
        raise ContentRejected(f"the artifact's squashfs file has version {major}, expected 4")
    if bytes_used > path.stat().st_size:
        raise ContentRejected(f"the artifact's squashfs file is damaged: it says it uses "
                              f"{bytes_used} bytes but has {path.stat().st_size}")
    unsquashfs = shutil.which("unsquashfs")
    if unsquashfs is None:
        raise ConversionFailed("unsquashfs is not installed", hint="install squashfs-tools")
    try:
        result = subprocess.run([unsquashfs, "-s", str(path)], capture_output=True,
                                timeout=UNSQUASHFS_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ContentRejected(f"unsquashfs -s did not finish in {UNSQUASHFS_TIMEOUT:.0f}s") from exc
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).decode(errors="replace").strip()[-500:]
        raise ContentRejected(f"the artifact's squashfs file is damaged: {detail}")


def is_sif(path: Path) -> bool:
    with open(path, "rb") as handle:
        header = handle.read(_SIF_HEADER.size)
    return len(header) == _SIF_HEADER.size and _SIF_HEADER.unpack(header)[1] == SIF_MAGIC


def extract_sif_squashfs(sif: Path, output: Path) -> str:
    """Copies the SIF's primary squashfs partition to `output`; returns its sha256 digest."""
    size = sif.stat().st_size
    with open(sif, "rb") as handle:
        raw = handle.read(_SIF_HEADER.size)
        if len(raw) != _SIF_HEADER.size or _SIF_HEADER.unpack(raw)[1] != SIF_MAGIC:
            raise ContentRejected("the artifact's image layer is not a SIF file (no SIF_MAGIC)",
                                  hint=f"media type {SIF_MEDIA_TYPE} needs a SIF file")
        _, _, _, _, _, _, _, _, total, descr_offset, _, _, _ = _SIF_HEADER.unpack(raw)
        if not 0 < total <= _SIF_MAX_DESCRIPTORS or descr_offset < _SIF_HEADER.size or (
                descr_offset + total * _SIF_DESCRIPTOR.size > size):
            raise ContentRejected("the SIF file's descriptor table is out of bounds")
        handle.seek(descr_offset)
        table = handle.read(total * _SIF_DESCRIPTOR.size)
        partition = _primary_squashfs(table, total, size)
        offset, length = partition
        handle.seek(offset)
        digest = hashlib.sha256()
        with open(output, "wb") as out:
            remaining = length
            while remaining:
                chunk = handle.read(min(_COPY_CHUNK, remaining))
                if not chunk:
                    raise ContentRejected("the SIF file ends inside its squashfs partition")
                out.write(chunk)
                digest.update(chunk)
                remaining -= len(chunk)
    return "sha256:" + digest.hexdigest()


def _primary_squashfs(table: bytes, total: int, file_size: int) -> tuple[int, int]:
    """(offset, length) of the used, primary-system squashfs partition in a descriptor table."""
    for index in range(total):
        fields = _SIF_DESCRIPTOR.unpack_from(table, index * _SIF_DESCRIPTOR.size)
        data_type, used, offset, length, extra = fields[0], fields[1], fields[5], fields[6], fields[-1]
        if not used or data_type != _SIF_DATA_PARTITION:
            continue
        fs_type, part_type = struct.unpack_from("<ii", extra)
        if fs_type != _SIF_FS_SQUASHFS or part_type != _SIF_PART_PRIMARY_SYSTEM:
            continue
        if offset < 0 or length <= 0 or offset + length > file_size:
            raise ContentRejected("the SIF file's squashfs partition is out of bounds")
        return offset, length
    raise ContentRejected("the SIF file has no primary squashfs partition",
                          hint="encrypted or ext3 SIF images cannot be used")


def artifact_metadata(config_media_type: str | None, config: bytes | None,
                      annotations: Mapping[str, str]) -> ImageMetadata:
    """Runtime metadata from the config blob when it has any, else from the annotation."""
    if config is not None and config_media_type in METADATA_CONFIG_TYPES:
        document, metadata = parse_image_config(config)
        if isinstance(document.get("config"), dict) and document["config"]:
            return metadata
    text = annotations.get(ANNOTATION_RUNTIME_CONFIG)
    if text is None:
        return ImageMetadata()
    try:
        runtime = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContentRejected(f"annotation {ANNOTATION_RUNTIME_CONFIG} is not JSON: {exc}") from exc
    return parse_image_config(json.dumps({"config": runtime}).encode())[1]


def metadata_config(metadata: ImageMetadata) -> bytes:
    """Our config blob for `metadata` (stable bytes: same metadata, same digest)."""
    runtime: dict[str, object] = {
        "Env": list(metadata.env), "Entrypoint": list(metadata.entrypoint),
        "Cmd": list(metadata.cmd), "WorkingDir": metadata.workdir, "User": metadata.user,
        "Labels": dict(metadata.labels),
    }
    return json.dumps({"config": runtime}, sort_keys=True, separators=(",", ":")).encode()
