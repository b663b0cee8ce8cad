"""Leases on cache entries: a running job holds a shared lease on every entry it uses,
and the eviction deletes an entry only while it holds the exclusive lease.

A lease is an fcntl.flock on `root/leases/<name>.lease`, so it works across threads
and worker processes on one host, and a killed job's leases end with its process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["Leases"]


class Leases:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid lease name {name!r}")
        return self.dir / f"{name}.lease"

    @contextlib.contextmanager
    def hold(self, names: Iterable[str]) -> Iterator[None]:
        """Shared leases on `names` for the duration of the block (blocks while one is
        being evicted, which takes moments)."""
        with contextlib.ExitStack() as stack:
            for name in sorted(set(names)):
                stack.enter_context(self._locked(name, fcntl.LOCK_SH))
            yield

    @contextlib.contextmanager
    def try_exclusive(self, name: str) -> Iterator[bool]:
        """Yields True holding the exclusive lease on `name`, False when it is in use."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self._locked(name, fcntl.LOCK_EX | fcntl.LOCK_NB))
            except BlockingIOError:
                acquired = False
            else:
                acquired = True
            yield acquired

    @contextlib.contextmanager
    def _locked(self, name: str, operation: int) -> Iterator[None]:
        path = self.path(name)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, operation)
                # The file may have been replaced between open and flock; a lock on a
                # file no longer at `path` protects nothing.
                try:
                    current = os.stat(path)
                except FileNotFoundError:
                    current = None
                opened = os.fstat(fd)
                if current is not None and (current.st_ino, current.st_dev) == (
                        opened.st_ino, opened.st_dev):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        try:
            yield
        finally:
            os.close(fd)
