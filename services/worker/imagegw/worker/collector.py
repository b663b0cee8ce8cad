"""Python's cyclic garbage collector, paused while build jobs run.

A conversion makes millions of long-lived objects (a layer index holds a tuple per
member, the flatten a node per path) and frees them by reference counting; it makes no
reference cycles of note. Each full collection walks every one of those objects and frees
nothing: the 400k-file benchmark image's conversion ran 24 of them, 5.1 of its 20.6 s of
Python CPU (the same peak RSS without them). So the collector is off while any build
runs and on again when the last one ends. A worker never idle still collects: a build
ending after the collector has been off for `LONGEST_PAUSE` seconds collects once.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Iterator

__all__ = ["LONGEST_PAUSE", "collector_paused"]

#: Longest the collector stays off while builds keep overlapping (seconds).
LONGEST_PAUSE = 600.0

_lock = threading.Lock()
_running = 0
_paused_since = 0.0
_was_enabled = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pauses the cyclic collector for the block (nested and concurrent blocks share one
    pause; the collector is left as it was found when the last one ends)."""
    global _running, _paused_since, _was_enabled
    with _lock:
        if _running == 0:
            _was_enabled, _paused_since = gc.isenabled(), time.monotonic()
            gc.disable()
        _running += 1
    try:
        yield
    finally:
        collect = False
        with _lock:
            _running -= 1
            if _running == 0:
                if _was_enabled:
                    gc.enable()
            elif _was_enabled and time.monotonic() - _paused_since > LONGEST_PAUSE:
                _paused_since = time.monotonic()
                collect = True
        if collect:
            gc.collect()
