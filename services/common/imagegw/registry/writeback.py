"""Starting the disk writes of a file's dirty pages now, without waiting for them.

Linux's sync_file_range(SYNC_FILE_RANGE_WRITE) queues the writeback of a byte range and
returns: the final fsync of a file written this way only waits for its last moments' data
(a 323 MB layer: 0.20 s -> 0.003 s here, written at ~300 MB/s). Elsewhere, or when the
call fails, nothing happens and the fsync does it all, as before. The layer cache uses it
while a blob downloads (blobcache.py); the image tar2sqfs writes, from a thread
(pipeline/writeback.py).
"""

from __future__ import annotations

import ctypes

__all__ = ["AVAILABLE", "start_writeback"]

SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _sync_file_range()
#: Whether this system can start writeback early (Linux).
AVAILABLE = _SYNC_FILE_RANGE is not None


def start_writeback(fd: int, offset: int = 0, count: int = 0) -> bool:
    """Queues the writeback of `count` bytes of `fd` from `offset` (0: to the end);
    False when it could not (no such call, or it failed: see ctypes.get_errno())."""
    if _SYNC_FILE_RANGE is None:
        return False
    return _SYNC_FILE_RANGE(fd, offset, count, SYNC_FILE_RANGE_WRITE) == 0
