"""Imports of ready squashfs images (ImportImage), by admins and ImportUsers.

The upload streams into a private temporary file (0600) under the data
directory while its size and sha256 are checked; the content must be a whole squashfs
image (the `hsqs` magic, the superblock's size within the file, and `unsquashfs -l`
reading every directory and inode). It is then published like a pulled image (image
file, then meta file with the ACLs) and recorded READY under the reference
"import/<name>:<tag>". The image id is the file's sha256, or, for an import with
metadata (ENV, ENTRYPOINT...), a digest of the file's sha256 and that metadata: like a
pulled image's config digest it names content and metadata together, so importing the
same bytes with other metadata under another tag never changes the first import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from imagegw.domain.acl import acl_file_suffix, acl_key, normalized_acl
from imagegw.domain.config import Config, Platform
from imagegw.domain.errors import (
    Cancelled,
    ContentRejected,
    InvalidRequest,
    PermissionDenied,
    ResourceExhausted,
)
from imagegw.domain.model import Failure, ImageMetadata, ImageState
from imagegw.gateway.core.access import Caller
from imagegw.gateway.core.pulls import PullManager, import_reference
from imagegw.gateway.core.views import ImageStatus
from imagegw.gateway.records import ImageRecord, PullKey
from imagegw.gateway.store.base import ImageStore
from imagegw.pipeline.meta import render_meta
from imagegw.publish import Publisher, publisher_for
from imagegw.publish.access import readers_for
from imagegw.publish.sif import publish_sif

__all__ = ["ImportHeader", "Importer", "import_image_id"]

log = logging.getLogger(__name__)

SQUASHFS_MAGIC = b"hsqs"
#: The squashfs 4.0 superblock: 96 bytes; `bytes_used` (u64, little-endian) at offset 40.
SUPERBLOCK_SIZE = 96
BYTES_USED_OFFSET = 40
UNSQUASHFS_TIMEOUT = 120.0
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ImportHeader:
    system: str
    tag: str
    format: str
    size_bytes: int
    sha256: str
    metadata: ImageMetadata
    user_acl: tuple[int, ...] = ()
    group_acl: tuple[int, ...] = ()


class Importer:
    def __init__(self, config: Config, store: ImageStore, pulls: PullManager, scratch_dir: str,
                 *, publishers: Callable[[Platform], Publisher] = publisher_for,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.pulls = pulls
        self.scratch_dir = Path(scratch_dir)
        self.publishers = publishers
        self.clock = clock

    def check_header(self, header: ImportHeader, caller: Caller) -> str:
        """Validates the header and the caller's right to import; returns the reference."""
        platform = self.config.platform(header.system)
        allowed = caller.is_admin(platform.name) or (
            not caller.anonymous and caller.user in self.config.import_users)
        if not allowed:
            raise PermissionDenied(
                f"{caller.label()} may not import images on {platform.name}",
                hint=f"imports are for Platforms.{platform.name}.admins and ImportUsers")
        if header.format not in ("", "squashfs"):
            raise InvalidRequest(f"unsupported import format {header.format!r}",
                                 hint="import squashfs images")
        if header.size_bytes <= 0:
            raise InvalidRequest("size_bytes must be the size of the image file")
        if header.size_bytes > self.config.limits.max_unpacked_bytes:
            raise ResourceExhausted(f"the image is larger than the limit of "
                                    f"{self.config.limits.max_unpacked_bytes} bytes")
        if not _SHA256.match(header.sha256):
            raise InvalidRequest("sha256 must be 64 lowercase hex digits")
        return import_reference(header.tag)

    def import_image(self, header: ImportHeader, chunks: Iterable[bytes],
                     caller: Caller) -> ImageStatus:
        reference = self.check_header(header, caller)
        self.scratch_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="import-", suffix=".partial", dir=self.scratch_dir)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                _receive(out, chunks, header)
            _check_squashfs(path)
            return self._publish(header, reference, path, caller)
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _publish(self, header: ImportHeader, reference: str, path: Path,
                 caller: Caller) -> ImageStatus:
        private = bool(header.user_acl or header.group_acl)
        users = normalized_acl((*header.user_acl, caller.uid)) if private else ()
        groups = normalized_acl(header.group_acl)
        image_id = import_image_id(header.sha256, header.metadata)
        suffix = acl_file_suffix(users, groups)
        image_file, meta_file = f"{image_id}{suffix}.squashfs", f"{image_id}{suffix}.meta"
        meta = render_meta("squashfs", header.metadata, user_acl=users, group_acl=groups)
        platform = self.config.platform(header.system)
        publisher = self.publishers(platform)
        readers = readers_for(platform, users, groups)
        publish_sif(publisher, platform, path, image_file, meta, meta_file, identity=image_id,
                    private=private, readers=readers)
        publisher.publish(path, image_file, meta, meta_file, private=private, readers=readers)
        key = PullKey(header.system, reference, acl_key(users, groups))
        now = self.clock()
        job_id = f"import-{uuid.uuid4().hex}"
        _pull, started = self.store.begin_pull(key, job_id, now, requester_uid=caller.uid,
                                               user_acl=users, group_acl=groups)
        if not started:
            raise ResourceExhausted(f"{reference} is being imported or pulled right now",
                                    hint="try again when that has finished")
        image = ImageRecord(
            system=header.system, image_id=image_id, format="squashfs", manifest_digest="",
            metadata=header.metadata, image_file=image_file, meta_file=meta_file,
            size_bytes=header.size_bytes, tags=(reference,), state=ImageState.READY,
            user_acl=users, group_acl=groups, acl_key=key.acl_key, last_pull=now,
            last_used=now, extra={"imported_by": str(caller.uid)})
        if not self.store.complete_pull(key, job_id, image, now):
            self.store.fail_pull(key, job_id, Failure.of(Cancelled("import superseded")),
                                 now)
        log.info("imported %s on %s as %s (%d bytes)", reference, header.system, image_id,
                 header.size_bytes)
        return self.pulls.status(key)


def import_image_id(file_sha256: str, metadata: ImageMetadata) -> str:
    """The file's sha256 without metadata, else a digest of it and the metadata."""
    if metadata == ImageMetadata():
        return file_sha256
    canonical = json.dumps({"sha256": file_sha256, "metadata": dataclasses.asdict(metadata)},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _receive(out: BinaryIO, chunks: Iterable[bytes], header: ImportHeader) -> None:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > header.size_bytes:
            raise ContentRejected(f"the upload is larger than the announced {header.size_bytes} "
                                  "bytes; nothing was imported")
        digest.update(chunk)
        out.write(chunk)
    if size != header.size_bytes:
        raise ContentRejected(f"the upload ended after {size} of {header.size_bytes} bytes; "
                              "nothing was imported")
    if digest.hexdigest() != header.sha256:
        raise ContentRejected(f"the upload's sha256 is {digest.hexdigest()}, not the announced "
                              f"{header.sha256}; nothing was imported")
    out.flush()
    os.fsync(out.fileno())


def _check_squashfs(path: Path) -> None:
    """A whole squashfs image: magic, the superblock's size within the file, and every
    directory and inode readable (`unsquashfs -l`); a truncated file fails here."""
    size = path.stat().st_size
    with open(path, "rb") as image:
        superblock = image.read(SUPERBLOCK_SIZE)
    if superblock[:len(SQUASHFS_MAGIC)] != SQUASHFS_MAGIC:
        raise ContentRejected("the upload is not a squashfs image (no 'hsqs' superblock); "
                              "nothing was imported")
    if len(superblock) < SUPERBLOCK_SIZE:
        raise ContentRejected("the upload is shorter than a squashfs superblock; "
                              "nothing was imported")
    (bytes_used,) = struct.unpack_from("<Q", superblock, BYTES_USED_OFFSET)
    if bytes_used > size:
        raise ContentRejected(f"the upload is a truncated squashfs image: its superblock says "
                              f"{bytes_used} bytes, the file has {size}; nothing was imported")
    try:
        done = subprocess.run(["unsquashfs", "-l", "-no-progress", str(path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=UNSQUASHFS_TIMEOUT, check=False)
    except FileNotFoundError as exc:
        raise ContentRejected("cannot check the upload: unsquashfs is not installed on the "
                              "gateway (Debian: squashfs-tools)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ContentRejected("checking the upload with unsquashfs timed out") from exc
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no detail"])[-1]
        raise ContentRejected(f"the upload is not a valid squashfs image (unsquashfs: "
                              f"{detail}); nothing was imported")
