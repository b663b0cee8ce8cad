"""glibc's malloc arenas for the long-running commands (`serve`, `gateway`, `worker`).

glibc gives each thread that allocates under contention an arena of its own (up to 8 per
core), and memory freed into one arena is not reused by the others. A conversion runs
download, index and read-ahead threads beside the gRPC ones, so a worker's peak RSS kept
~11 MiB of freed, unreusable memory in a dozen arenas (docs/performance.md, "Memory of
the service process").
Python threads mostly allocate under the GIL, so two arenas lose no measurable speed.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: Arenas a service process uses (glibc's own default: 8 per core).
ARENAS = 2
#: mallopt(3)'s parameter number for the arena limit (malloc.h).
_M_ARENA_MAX = -8


def limit_arenas(environ: Mapping[str, str], arenas: int = ARENAS) -> bool:
    """Caps glibc's malloc arenas at `arenas`; call before the process starts threads.

    A MALLOC_ARENA_MAX in the environment (glibc reads it itself) is left as it is, and
    another C library (no mallopt) is left alone. Returns whether the cap was set."""
    if "MALLOC_ARENA_MAX" in environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_ARENA_MAX, arenas) != 1:  # mallopt returns 1 on success
        log.debug("mallopt(M_ARENA_MAX, %d) refused", arenas)
        return False
    return True
