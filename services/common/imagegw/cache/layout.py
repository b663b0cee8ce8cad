"""The worker's disk layout: one object owns the layer cache, the scratch space
for jobs and the locks on them. Nothing else builds paths under these roots."""

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
from pathlib import Path

from imagegw.domain.errors import ConversionFailed

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
        self.cache_root = private_directory(cache_dir)
        self.expand_root = private_directory(expand_dir)
        (self.cache_root / "locks").mkdir(exist_ok=True)

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
        lock_path = self.cache_root / "locks" / f"image-{image_id}.lock"
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
