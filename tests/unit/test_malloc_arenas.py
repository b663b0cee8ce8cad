"""The service commands cap glibc's malloc arenas (imagegw.cli.malloc): threads that
allocate at once share two arenas instead of one each, and a MALLOC_ARENA_MAX the
administrator set is left to glibc."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from imagegw.cli import malloc

#: 8 threads allocating at once through libc (ctypes releases the GIL), then the number
#: of extra arenas' heaps (64 MiB-aligned anonymous mappings) in the process.
_PROBE = textwrap.dedent("""
    import ctypes, threading
    from imagegw.cli import malloc
    capped = malloc.limit_arenas({})
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    def churn():
        for _ in range(20000):
            libc.free(libc.malloc(256))
    threads = [threading.Thread(target=churn) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    heaps = 0
    for line in open("/proc/self/maps"):
        fields = line.split()
        if len(fields) == 5 and int(fields[0].split("-")[0], 16) % (64 << 20) == 0:
            heaps += 1
    print(capped, heaps)
""")


def test_threads_allocating_at_once_share_the_capped_arenas():
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                          timeout=60, check=True)
    capped, heaps = done.stdout.split()
    assert capped == "True"
    # The main arena lives in the brk heap; ARENAS - 1 more are mmap'd heaps.
    assert int(heaps) <= malloc.ARENAS - 1


def test_an_administrators_malloc_arena_max_is_left_to_glibc():
    assert malloc.limit_arenas({"MALLOC_ARENA_MAX": "4"}) is False
