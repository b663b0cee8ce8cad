"""Which malloc tar2sqfs runs on.

tar2sqfs keeps a tree node, an inode and block records for every file until it writes
its tables, and glibc's malloc rounds each of those small allocations up and puts a
header before it. jemalloc (Debian's `libjemalloc2`, the allocator redis-server is built
with) packs small allocations in size classes without headers and, told to return freed
pages at once (`dirty_decay_ms:0`), does not keep the compressors' freed block buffers:
over the benchmark's flat 400k-file tar tar2sqfs peaks at 129 MiB instead of 142, and
takes ~10 % less CPU; on images of fewer, larger files it costs the same (within 2 %;
docs/performance.md, "tar2sqfs on jemalloc"). It changes
nothing in the image: the bytes are the same (`probe()` checks exactly that), so the
allocator is not part of a conversion's key.

`ConverterOptions.writerAllocator`: "jemalloc" (refused at start-up when it cannot be
loaded), "glibc" (tar2sqfs as it is), or "auto": jemalloc when it is installed and passes
the probe, else glibc. The worker settles "auto" once (`resolve`); `preload()` is what
tar2sqfs's environment gains.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import shutil
import subprocess
import sysconfig
import tarfile
import tempfile
from dataclasses import replace
from pathlib import Path

from imagegw.domain.config import ConverterOptions
from imagegw.domain.errors import ConfigError

log = logging.getLogger(__name__)

LIBRARY_NAME = "libjemalloc.so.2"
#: Where the library is looked for: the multiarch directory Debian installs it in, then
#: the usual others.
LIBRARY_DIRS = tuple(dict.fromkeys(
    path for path in (
        f"/usr/lib/{sysconfig.get_config_var('MULTIARCH') or 'x86_64-linux-gnu'}",
        "/usr/lib64", "/usr/lib", "/usr/local/lib")))
#: One arena (tar2sqfs allocates its tree from one thread), and freed pages returned at
#: once. A MALLOC_CONF in the worker's environment is left as the site set it.
MALLOC_CONF = "narenas:1,dirty_decay_ms:0,muzzy_decay_ms:0"
INSTALL_HINT = ("install Debian's libjemalloc2 (`apt-get install libjemalloc2`), or set "
                "ConverterOptions.writerAllocator to \"glibc\"")
_PROBE_TIMEOUT = 60.0

__all__ = ["INSTALL_HINT", "LIBRARY_NAME", "MALLOC_CONF", "find_library", "preload", "probe", "resolve",
           "usable_library"]


def find_library() -> Path | None:
    """The first jemalloc library found, or None."""
    return next((Path(directory, LIBRARY_NAME) for directory in LIBRARY_DIRS
                 if Path(directory, LIBRARY_NAME).is_file()), None)


@functools.lru_cache(maxsize=8)
def probe(library: Path) -> str | None:
    """None when tar2sqfs runs with `library` preloaded and writes the very bytes it
    writes on glibc; otherwise what went wrong, for a person."""
    if any(separator in str(library) for separator in " :"):
        return f"{library}: LD_PRELOAD cannot name a path with a space or a colon"
    tar2sqfs = shutil.which("tar2sqfs")
    if tar2sqfs is None:
        return "tar2sqfs (squashfs-tools-ng) is not installed"
    tar = _probe_tar()
    with tempfile.TemporaryDirectory(prefix="imagegw-malloc-probe-") as scratch:
        images = {}
        for allocator, env in (("glibc", None), ("jemalloc", _with_library(library))):
            image = Path(scratch, f"{allocator}.sqfs")
            run = subprocess.run(
                [tar2sqfs, "-q", "-f", "-c", "gzip", "-j", "2", "--no-xattr", str(image)],
                input=tar, capture_output=True, env=env, timeout=_PROBE_TIMEOUT, check=False)
            stderr = run.stderr.decode(errors="replace").strip()
            if run.returncode != 0 or "preload" in stderr or "<jemalloc>" in stderr:
                return (f"tar2sqfs with {allocator} failed (exit code {run.returncode}): "
                        f"{stderr[-500:]}")
            images[allocator] = image.read_bytes()
        if images["glibc"] != images["jemalloc"]:
            return f"tar2sqfs wrote a different image with {library} preloaded"
    return None


def usable_library() -> tuple[Path, None] | tuple[None, str]:
    """The jemalloc tar2sqfs can run with, or why there is none (for a person)."""
    library = find_library()
    if library is None:
        return None, f"{LIBRARY_NAME} is not installed (looked in {', '.join(LIBRARY_DIRS)})"
    problem = probe(library)
    return (library, None) if problem is None else (None, problem)


def resolve(options: ConverterOptions) -> ConverterOptions:
    """`options` with the allocator tar2sqfs will really run on ("jemalloc" or "glibc").
    Raises ConfigError when "jemalloc" is asked for and cannot be had."""
    if options.writer_allocator == "glibc":
        return options
    library, problem = usable_library()
    if problem is None:
        log.info("tar2sqfs runs on jemalloc (%s)", library)
        return replace(options, writer_allocator="jemalloc")
    if options.writer_allocator == "jemalloc":
        raise ConfigError(f"ConverterOptions.writerAllocator is \"jemalloc\" but {problem}; "
                          f"{INSTALL_HINT}")
    log.info("tar2sqfs runs on glibc's malloc: %s (jemalloc takes up to ~10%% off its CPU "
             "and memory on images of many small files: %s)", problem, INSTALL_HINT)
    return replace(options, writer_allocator="glibc")


def preload(environment: dict[str, str] | None,
            options: ConverterOptions) -> dict[str, str] | None:
    """`environment` (None: the worker's own) with jemalloc added when `options` resolved
    to it; None when tar2sqfs runs in the worker's own environment."""
    if options.writer_allocator != "jemalloc":
        return environment
    library = find_library()
    if library is None:  # removed since start-up: the image is the same either way
        log.warning("%s is gone; tar2sqfs runs on glibc's malloc", LIBRARY_NAME)
        return environment
    return _with_library(library, environment)


def _with_library(library: Path, environment: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if environment is None else environment)
    env["LD_PRELOAD"] = " ".join(filter(None, (env.get("LD_PRELOAD"), str(library))))
    env.setdefault("MALLOC_CONF", MALLOC_CONF)
    return env


def _probe_tar() -> bytes:
    """A tar of a few hundred small files and one of several blocks: tree, fragments and
    blocks are all allocated."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for number in range(300):
            data = b"imagegw allocator probe %d\n" % number * (number % 7 + 1)
            info = tarfile.TarInfo(f"dir{number % 10}/file{number}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        big = bytes(range(256)) * 2048
        info = tarfile.TarInfo("big.bin")
        info.size = len(big)
        tar.addfile(info, io.BytesIO(big))
    return buffer.getvalue()
