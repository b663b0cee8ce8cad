"""The worker's disk layout. `CacheLayout` names every directory under the cache root
(blobs, their sidecars, converted images, leases, locks) and makes the caches over them;
`WorkerPaths` adds the scratch space of jobs and the image locks. Nothing else builds
paths under these roots: the caches are handed their directories."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imagegw.domain.errors import ConversionFailed
from imagegw.registry.blobcache import BlobCache

from .conversions import ConversionCache
from .leases import Leases


@dataclass(frozen=True)
class CacheLayout:
    root: Path

    def __init__(self, root: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def blobs(self) -> Path:
        """Verified layer blobs, by sha256."""
        return self.root / "blobs" / "sha256"

    @property
    def sidecars(self) -> Path:
        """Files derived from blobs (layer indexes), evicted with them."""
        return self.root / "sidecars"

    @property
    def conversions(self) -> Path:
        """Converted images, by conversion key."""
        return self.root / "conversions"

    @property
    def leases(self) -> Path:
        """What running jobs hold (kept from eviction)."""
        return self.root / "leases"

    @property
    def locks(self) -> Path:
        """Lock files: one per blob download and per image being built."""
        return self.root / "locks"

    def blob_cache(self) -> BlobCache:
        return BlobCache(self.blobs, locks=self.locks, sidecars=self.sidecars)

    def conversion_cache(self) -> ConversionCache:
        return ConversionCache(self.conversions)

    def lease_table(self) -> Leases:
        return Leases(self.leases)

log = logging.getLogger(__name__)


def private_directory(path: str | os.PathLike[str]) -> Path:
    """Creates `path` 0700, or makes the service account's own directory 0700: blobs and
    conversions fetched with a user's registry login, scratch space and records are as
    private as the images they make. A shared directory (another owner, or sticky like
    /tmp) is left alone with a warning: name a directory of the service account instead."""
    directory = Path(path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid == os.geteuid() and not info.st_mode & stat.S_ISVTX:
        if stat.S_IMODE(info.st_mode) != 0o700:
            try:
                os.chmod(directory, 0o700)
            except OSError as exc:  # e.g. read-only for this process (a worker's data dir)
                log.warning("cannot make %s 0700 (mode %04o): %s", directory,
                            stat.S_IMODE(info.st_mode), exc.strerror or exc)
    else:
        log.warning("%s is a shared directory (owner uid %d, mode %04o): other users may "
                    "see what is kept there; configure a directory of the service account",
                    directory, info.st_uid, stat.S_IMODE(info.st_mode))
    return directory


class WorkerPaths:
    def __init__(self, cache_dir: str | os.PathLike[str], expand_dir: str | os.PathLike[str]):
        self.layout = CacheLayout(private_directory(cache_dir))
        self.expand_root = private_directory(expand_dir)
        self.layout.locks.mkdir(exist_ok=True)

    @contextlib.contextmanager
    def scratch(self, job_id: str) -> Iterator[Path]:
        """A private scratch directory for one job, removed on success and failure."""
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in job_id)[:64]
        try:
            path = Path(tempfile.mkdtemp(prefix=f"job-{safe}-", dir=self.expand_root))
        except OSError as exc:
            raise self._scratch_failed(exc) from exc
        # The lock tells clean_stale_scratch that a live process owns this directory.
        try:
            owner = open(path / ".owner.lock", "a+b")  # noqa: SIM115 - closed below
        except OSError as exc:
            shutil.rmtree(path, ignore_errors=True)
            raise self._scratch_failed(exc) from exc
        with owner:
            fcntl.flock(owner, fcntl.LOCK_EX)
            try:
                yield path
            finally:
                shutil.rmtree(path, ignore_errors=True)

    def _scratch_failed(self, exc: OSError) -> ConversionFailed:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = f"free space on the file system holding {self.expand_root}"
        else:
            hint = f"the worker needs write access to {self.expand_root} (ExpandDirectory)"
        return ConversionFailed(
            f"cannot create scratch space in {self.expand_root}: {exc.strerror or exc}",
            hint=hint)

    @contextlib.contextmanager
    def image_lock(self, image_id: str) -> Iterator[None]:
        """Serialises building one image id across jobs and worker processes."""
        lock_path = self.layout.locks / f"image-{image_id}.lock"
        with open(lock_path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def clean_stale_scratch(self) -> int:
        """Removes scratch directories whose owning process is gone (killed worker)."""
        removed = 0
        for entry in self.expand_root.glob("job-*"):
            if not entry.is_dir():
                continue
            try:
                with open(entry / ".owner.lock", "a+b") as owner:
                    fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
            except BlockingIOError:
                continue  # a running job owns it
            except FileNotFoundError:
                continue
        return removed
