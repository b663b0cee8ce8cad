"""Starts the disk writes of a file while another process is still writing it.

The image tar2sqfs writes is fsynced before it is published (publish/local.py). Left
to the kernel, most of it is still dirty in the page cache when tar2sqfs exits, and
that fsync then waits for the whole image (about 1 s for 460 MB here). `EarlyWriteback`
asks Linux to start writing what is there every `interval` seconds
(sync_file_range(SYNC_FILE_RANGE_WRITE): it does not wait, and keeps the page cache),
so the final fsync only waits for the last moments' data. Elsewhere it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from pathlib import Path
from types import TracebackType

from imagegw.registry.writeback import AVAILABLE, start_writeback

log = logging.getLogger(__name__)

__all__ = ["EarlyWriteback"]


class EarlyWriteback:
    """While open, starts writeback of `path` (once it exists) every `interval` s."""

    def __init__(self, path: Path, interval: float = 0.25) -> None:
        self._path = path
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)

    def __enter__(self) -> EarlyWriteback:
        if AVAILABLE:
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        fd = -1
        try:
            while not self._stop.wait(self._interval):
                if fd < 0:
                    try:
                        fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
                    except OSError:
                        continue  # not created yet
                if not start_writeback(fd):
                    log.debug("sync_file_range on %s: errno %d; stopping early writeback",
                              self._path, ctypes.get_errno())
                    return
        finally:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
