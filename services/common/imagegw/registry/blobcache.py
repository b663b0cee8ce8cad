"""The content-addressed layer cache: `root/blobs/sha256/<hex>`, locked per digest.

`BlobCache.ensure` downloads a blob at most once across threads and processes
(an fcntl.flock on `root/locks/<hex>.lock`), writes it to a temporary file next
to its final place and renames it there only after its size and sha256 check.
`ensure_verified` is the same for a fetcher that verifies while it streams
(`RegistryClient.fetch_blob`): the blob is not read a second time. A blob's disk writes
start while it downloads (writeback.py), so its final fsync waits for little.
Derived files (a layer's index) live in `root/sidecars/<hex>.<name>`.
Every hit refreshes the blob's mtime: the eviction in `imagegw.cache` is LRU by it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from imagegw.domain.errors import ConversionFailed, DigestMismatch

from .manifest import check_digest_syntax
from .writeback import start_writeback

logger = logging.getLogger(__name__)

_HASH_CHUNK = 1024 * 1024
#: While a blob downloads, the writeback of every this many bytes written starts at once:
#: the fsync before the blob gets its name (and the conversion the end of the layer) then
#: waits for the last of them only (a 323 MB layer: 0.20 s -> 0.003 s here).
WRITEBACK_STEP = 16 << 20


class BlobCache:
    """Verified blobs on disk, named by their sha256."""

    def __init__(self, blobs: Path, *, locks: Path, sidecars: Path) -> None:
        """Blobs in `blobs`, their download locks in `locks`, derived files in `sidecars`
        (directories named by the worker's cache layout, `imagegw.cache.layout`)."""
        self._blobs = Path(blobs)
        self._locks = Path(locks)
        self._sidecars = Path(sidecars)
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._locks.mkdir(parents=True, exist_ok=True)
        self._sidecars.mkdir(parents=True, exist_ok=True)

    @property
    def blob_dir(self) -> Path:
        """The directory of the blobs (for the eviction's listing)."""
        return self._blobs

    def sidecar_path(self, digest: str, name: str) -> Path:
        """Where a file derived from blob `digest` lives (evicted with the blob)."""
        return self._sidecars / f"{self.path(digest).name}.{name}"

    def sidecars(self, digest: str) -> list[Path]:
        """Every derived file of blob `digest`."""
        return sorted(self._sidecars.glob(self.path(digest).name + ".*"))

    def path(self, digest: str) -> Path:
        """Where blob `digest` lives (whether or not it is there yet)."""
        check_digest_syntax(digest)
        return self._blobs / digest.split(":", 1)[1]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def ensure(
        self, digest: str, size: int, fetch: Callable[[BinaryIO], object]
    ) -> tuple[Path, bool]:
        """The path of verified blob `digest`, and whether this call downloaded it.

        `fetch(out)` writes the blob's bytes to `out` (what it returns is ignored,
        so `out.write` itself will do); it runs at most once per
        digest at a time, and only when no file of the right size is cached. The
        cache trusts no such fetcher: what it wrote is read back and hashed.
        """
        return self._ensure(digest, size, fetch, _verify)

    def ensure_verified(
        self, digest: str, size: int, fetch: Callable[[BinaryIO], object]
    ) -> tuple[Path, bool]:
        """As `ensure`, for a `fetch` that itself checks size and sha256 while it writes
        and raises on a mismatch (as `RegistryClient.fetch_blob` does).

        Only the size is checked again here; the bytes are not read back.
        """
        return self._ensure(digest, size, fetch, _check_size)

    def _ensure(
        self, digest: str, size: int, fetch: Callable[[BinaryIO], object], check: _Check
    ) -> tuple[Path, bool]:
        final = self.path(digest)
        if _has_size(final, size):
            _touch(final)
            return final, False
        with self._locked(digest):
            if _has_size(final, size):
                _touch(final)
                return final, False
            if final.exists():
                logger.warning("cached blob %s has the wrong size; fetching it again", digest)
                final.unlink()
            self._download(digest, size, final, fetch, check)
        return final, True

    def _download(
        self, digest: str, size: int, final: Path, fetch: Callable[[BinaryIO], object],
        check: _Check,
    ) -> None:
        try:
            fd, temp_name = tempfile.mkstemp(dir=self._blobs, prefix=".partial-")
        except OSError as exc:
            raise self._unwritable(exc) from exc
        temp = Path(temp_name)
        try:
            # Unbuffered: the fetcher writes large chunks, and a failed write (disk
            # full) must surface there, not again from a flush when the file closes.
            with _WritingBack(fd, "w+") as out:
                fetch(out)  # raises its own errors (the client names the directory)
                check(out, digest, size)
                self._finish(out, temp, final)
        finally:
            temp.unlink(missing_ok=True)

    def _finish(self, out: BinaryIO, temp: Path, final: Path) -> None:
        try:
            os.fsync(out.fileno())
            os.chmod(temp, 0o600)  # a blob fetched with one user's login is theirs
            os.replace(temp, final)
        except OSError as exc:
            raise self._unwritable(exc) from exc

    def _unwritable(self, exc: OSError) -> ConversionFailed:
        return ConversionFailed(
            f"cannot write to the layer cache {self._blobs}: {exc.strerror or exc}",
            hint="free space in CacheDirectory (or lower CacheMaxBytes), or fix its permissions")

    @contextlib.contextmanager
    def _locked(self, digest: str) -> Iterator[None]:
        lock_path = self._locks / (digest.split(":", 1)[1] + ".lock")
        with open(lock_path, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


_Check = Callable[[BinaryIO, str, int], None]


class _WritingBack(io.FileIO):
    """A download's temporary file (unbuffered) that starts the writeback of every
    WRITEBACK_STEP bytes written (a download that restarts rewinds: it starts again)."""

    _queued = 0  # bytes from the start whose writeback has been started

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        written = super().write(data)
        end = self.tell()
        if end < self._queued:
            self._queued = 0
        if end - self._queued >= WRITEBACK_STEP:
            start_writeback(self.fileno(), self._queued, end - self._queued)
            self._queued = end
        return written


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _check_size(out: BinaryIO, digest: str, size: int) -> None:
    """The fetcher verified the bytes; a wrong size here means it broke its promise."""
    written = out.seek(0, os.SEEK_END)
    if written != size:
        raise DigestMismatch(f"blob {digest} is {written} bytes; expected {size}")


def _verify(out: BinaryIO, digest: str, size: int) -> None:
    """Re-reads what `fetch` wrote: the cache trusts no fetcher."""
    out.seek(0)
    hasher = hashlib.sha256()
    total = 0
    while chunk := out.read(_HASH_CHUNK):
        hasher.update(chunk)
        total += len(chunk)
    if total != size:
        raise DigestMismatch(f"blob {digest} is {total} bytes; expected {size}")
    actual = "sha256:" + hasher.hexdigest()
    if actual != digest:
        raise DigestMismatch(f"blob {digest} hashes to {actual}")
