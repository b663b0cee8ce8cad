"""The content-addressed layer cache: `root/blobs/sha256/<hex>`, locked per digest.

`BlobCache.ensure` downloads a blob at most once across threads and processes
(an fcntl.flock on `root/locks/<hex>.lock`), writes it to a temporary file next
to its final place and renames it there only after its size and sha256 check.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from imagegw.errors import DigestMismatch

from .manifest import check_digest_syntax

logger = logging.getLogger(__name__)

_HASH_CHUNK = 1024 * 1024


class BlobCache:
    """Verified blobs on disk, named by their sha256."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs" / "sha256"
        self._locks = self.root / "locks"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._locks.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """Where blob `digest` lives (whether or not it is there yet)."""
        check_digest_syntax(digest)
        return self._blobs / digest.split(":", 1)[1]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def ensure(
        self, digest: str, size: int, fetch: Callable[[BinaryIO], None]
    ) -> tuple[Path, bool]:
        """The path of verified blob `digest`, and whether this call downloaded it.

        `fetch(out)` writes the blob's bytes to `out`; it runs at most once per
        digest at a time, and only when no file of the right size is cached.
        """
        final = self.path(digest)
        if _has_size(final, size):
            return final, False
        with self._locked(digest):
            if _has_size(final, size):
                return final, False
            if final.exists():
                logger.warning("cached blob %s has the wrong size; fetching it again", digest)
                final.unlink()
            self._download(digest, size, final, fetch)
        return final, True

    def _download(
        self, digest: str, size: int, final: Path, fetch: Callable[[BinaryIO], None]
    ) -> None:
        fd, temp_name = tempfile.mkstemp(dir=self._blobs, prefix=".partial-")
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "w+b") as out:
                fetch(out)
                out.flush()
                _verify(out, digest, size)
                os.fsync(out.fileno())
            os.chmod(temp, 0o644)
            os.replace(temp, final)
        finally:
            temp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self, digest: str) -> Iterator[None]:
        lock_path = self._locks / (digest.split(":", 1)[1] + ".lock")
        with open(lock_path, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


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
