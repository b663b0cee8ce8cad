"""pipeline/heap.py: the one place that gives freed C heap memory back to the kernel."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

import pytest

from imagegw.pipeline import heap


def rss_anon_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_returns_the_pages_a_phase_freed() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # 64 MiB in 32 KiB blocks (under the mmap threshold: in the heap), touched, then all
    # but the last freed: the last keeps the heap's top, so free() alone returns nothing.
    blocks = [libc.malloc(32 << 10) for _ in range(2048)]
    assert all(blocks)
    for block in blocks:
        ctypes.memset(block, 1, 32 << 10)
    for block in blocks[:-1]:
        libc.free(block)
    before = rss_anon_kib()
    assert heap.trim() is True
    after = rss_anon_kib()
    libc.free(blocks[-1])
    assert before - after > 32 << 10  # KiB: most of the 64 MiB went back


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_the_first_trim_starts_no_process(monkeypatch) -> None:
    """The first trim runs at the serve tree's peak (the one pass's verify): finding libc
    must not start `ldconfig` there (ctypes.util.find_library does), a child whose
    fork shares, and is counted with, the whole service's memory."""
    import subprocess

    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args}")

    heap._malloc_trim.cache_clear()
    monkeypatch.setattr(subprocess, "Popen", refuse)
    assert heap._malloc_trim() is not None
    heap.trim()
