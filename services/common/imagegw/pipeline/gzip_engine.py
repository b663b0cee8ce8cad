"""Which deflate implementation tar2sqfs's gzip compressor runs on.

tar2sqfs compresses gzip blocks with zlib. At the same level libdeflate does the same
job about 1.8x faster (level 6, 128 KiB blocks of the benchmark images: 6.3 s against
11.4 s of CPU for 300 MB) with slightly smaller output, and compressing is most of the
CPU a conversion takes. `native/sqfs_libdeflate.c`, loaded into tar2sqfs with
LD_PRELOAD, swaps the compressor's block function for libdeflate's zlib-format one when
libdeflate writes exactly what the settings ask for (compressing, 32 KiB window, no
zlib strategy flags); it changes nothing else. Images made either way hold the same
files and are read the same way (squashfs "gzip" blocks are zlib streams); their bytes
differ, so the conversion key names the engine (`ConverterOptions.gzip_engine`).

`resolve()` turns "auto" into the engine this worker really has, once: the shim must
exist and pass `probe()`, a real tar2sqfs run checked against tar2sqfs's own reader.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import replace
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from imagegw.domain.config import ConverterOptions
from imagegw.domain.errors import ConfigError

log = logging.getLogger(__name__)

SHIM_NAME = "sqfs_libdeflate.so"
NATIVE_DIR = Path(__file__).resolve().parent / "native"
#: Where the shim is looked for: beside this module, where installing the package builds
#: it (named like an extension module, `sqfs_libdeflate.cpython-311-<arch>.so`), or in a
#: system directory where a site installed its own build.
SHIM_PATHS = (*(NATIVE_DIR / f"sqfs_libdeflate{suffix}" for suffix in EXTENSION_SUFFIXES),
              Path("/usr/local/lib/imagegw") / SHIM_NAME,
              Path("/usr/lib/imagegw") / SHIM_NAME)
BUILD_HINT = ("reinstall imagegw where Debian's libsquashfs-dev and libdeflate-dev are installed "
              "(`pip install --force-reinstall --no-deps imagegw-*.tar.gz` builds the shim; "
              "a development checkout: `scripts/setup`), or set ConverterOptions.gzipEngine to \"zlib\"")
_PROBE_NAME = "probe.txt"
_PROBE_DATA = b"".join(b"imagegw gzip engine probe, line %d\n" % n for n in range(4000))
_PROBE_TIMEOUT = 60.0

__all__ = ["find_shim", "probe", "resolve", "tar2sqfs_environment", "usable_shim"]


def find_shim() -> Path | None:
    """The first shim library found, or None."""
    return next((path for path in SHIM_PATHS if path.is_file()), None)


@functools.lru_cache(maxsize=8)
def probe(shim: Path) -> str | None:
    """None when tar2sqfs runs with `shim` loaded, the shim took over its gzip blocks
    and the image reads back right; otherwise what went wrong, for a person."""
    if any(separator in str(shim) for separator in " :"):
        return f"{shim}: LD_PRELOAD cannot name a path with a space or a colon; install it elsewhere"
    tar2sqfs, rdsquashfs = shutil.which("tar2sqfs"), shutil.which("rdsquashfs")
    if tar2sqfs is None or rdsquashfs is None:
        return "tar2sqfs or rdsquashfs (squashfs-tools-ng) is not installed"
    tar = _probe_tar()
    with tempfile.TemporaryDirectory(prefix="imagegw-gzip-probe-") as scratch:
        images = {}
        for engine, env in (("zlib", None), ("libdeflate", _preloaded(shim))):
            image = Path(scratch, f"{engine}.sqfs")
            run = subprocess.run(
                [tar2sqfs, "-q", "-f", "-c", "gzip", "-X", "level=6", "-j", "1", "--no-xattr",
                 str(image)], input=tar, capture_output=True, env=env,
                timeout=_PROBE_TIMEOUT, check=False)
            stderr = run.stderr.decode(errors="replace").strip()
            if run.returncode != 0 or "preload" in stderr:
                return f"tar2sqfs with {engine} failed (exit code {run.returncode}): {stderr[-500:]}"
            images[engine] = image.read_bytes()
        if images["zlib"] == images["libdeflate"]:
            return f"{shim} did not take over tar2sqfs's gzip compressor (libsquashfs changed?)"
        read = subprocess.run([rdsquashfs, "-c", _PROBE_NAME, str(Path(scratch, "libdeflate.sqfs"))],
                              capture_output=True, timeout=_PROBE_TIMEOUT, check=False)
        if read.returncode != 0 or read.stdout != _PROBE_DATA:
            return f"an image written with {shim} does not read back as written"
    return None


def resolve(options: ConverterOptions) -> ConverterOptions:
    """`options` with the gzip engine this worker will really use ("libdeflate" or
    "zlib"). Raises ConfigError when "libdeflate" is asked for and cannot be had."""
    if options.gzip_engine == "zlib":
        return options
    shim, problem = usable_shim()
    if problem is None:
        log.info("tar2sqfs compresses gzip with libdeflate (%s)", shim)
        return replace(options, gzip_engine="libdeflate")
    if options.gzip_engine == "libdeflate":
        raise _unavailable(problem)
    log.warning("tar2sqfs compresses gzip with zlib, about 1.8x slower than libdeflate: %s; %s",
                problem, BUILD_HINT)
    return replace(options, gzip_engine="zlib")


def tar2sqfs_environment(options: ConverterOptions) -> dict[str, str] | None:
    """The environment to run tar2sqfs in for `options` (None: the worker's own)."""
    if options.compressor != "gzip" or options.gzip_engine == "zlib":
        return None
    match usable_shim():
        case (Path() as shim, None):
            return _preloaded(shim)
        case (None, str(problem)) if options.gzip_engine == "libdeflate":
            raise _unavailable(problem)
    return None


def usable_shim() -> tuple[Path, None] | tuple[None, str]:
    """The shim tar2sqfs can run with, or why there is none (for a person)."""
    shim = find_shim()
    if shim is None:
        return None, f"{SHIM_NAME} is not built or installed"
    problem = probe(shim)
    return (shim, None) if problem is None else (None, problem)


def _unavailable(problem: str) -> ConfigError:
    return ConfigError(f"ConverterOptions.gzipEngine is \"libdeflate\" but {problem}; {BUILD_HINT}")


def _preloaded(shim: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, (str(shim), env.get("LD_PRELOAD"))))
    return env


def _probe_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(_PROBE_NAME)
        info.size = len(_PROBE_DATA)
        tar.addfile(info, io.BytesIO(_PROBE_DATA))
    return buffer.getvalue()
