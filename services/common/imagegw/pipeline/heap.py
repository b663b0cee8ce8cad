"""Gives the memory a finished phase freed back to the kernel (issue 21: the serve tree's
peak RSS).

glibc keeps what a phase frees (the one pass's read buffers, the exact tree once verified)
in its heaps for later allocations, and RSS counts it until then; the one pass's end is
exactly when tar2sqfs holds its whole tree, so the two would add up. `trim()` is
malloc_trim(3) at such a boundary: it returns every whole free page (a few ms). With
another C library (no malloc_trim) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

__all__ = ["trim"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def trim() -> bool:
    """Returns the free pages of the C heaps to the kernel; whether any were returned."""
    function = _malloc_trim()
    return function is not None and function(0) == 1
