"""tar2sqfs on jemalloc (services/common/imagegw/pipeline/writer_malloc.py): found and probed
on this machine, really loaded into the tar2sqfs a conversion runs (and into nothing else),
the image byte for byte the one glibc's malloc gives, and every way it can be missing or
broken is a fallback or a clear start-up error."""

from __future__ import annotations

import functools
import io
import logging
import os
import random
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import pytest

from imagegw.cli.doctor import FAIL, OK, WARN, check_allocator
from imagegw.domain.config import ConverterOptions, parse_config
from imagegw.domain.errors import ConfigError
from imagegw.pipeline import gzip_engine, writer_malloc
from imagegw.pipeline.squashfs import build_squashfs

OPTIONS = ConverterOptions(compressor="gzip", level=6, block_size=131072, jobs=2,
                           gzip_engine="libdeflate")


@functools.cache
def tar_of_many_files() -> bytes:
    """Small files (fragments, tree nodes), a hard link, a symlink and multi-block files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for number in range(3000):
            data = (b"file %d of the allocator test\n" % number) * (number % 23 + 1)
            info = tarfile.TarInfo(f"d{number % 40}/sub{number % 7}/f{number}.txt")
            info.size = len(data)
            info.mtime = 1_600_000_000 + number
            tar.addfile(info, io.BytesIO(data))
        for number, size in enumerate((3 * 131072 + 17, 600_000)):
            data = random.Random(number).randbytes(size // 2) + bytes(size - size // 2)
            info = tarfile.TarInfo(f"big/blob{number}.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("big/same.bin")
        link.type, link.linkname = tarfile.LNKTYPE, "big/blob0.bin"
        tar.addfile(link)
        symlink = tarfile.TarInfo("d0/latest")
        symlink.type, symlink.linkname = tarfile.SYMTYPE, "sub0/f0.txt"
        tar.addfile(symlink)
    return buffer.getvalue()


def children_named(name: str) -> list[int]:
    """This process's children whose executable is `name`."""
    found = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                if Path(f"/proc/{pid}/exe").resolve().name == name:
                    found.append(int(pid))
            except OSError:
                continue
    return found


def build(tmp_path: Path, options: ConverterOptions, name: str) -> tuple[bytes, str, str]:
    """The image built through build_squashfs, with the libraries mapped into the tar2sqfs
    it ran and its MALLOC_CONF, both read while it was running."""
    tar = tar_of_many_files()
    seen: dict[str, str] = {}

    def write_tar(pipe: BinaryIO) -> None:
        pipe.write(tar[:len(tar) // 2])
        pipe.flush()
        (pid,) = children_named("tar2sqfs")
        seen["maps"] = Path(f"/proc/{pid}/maps").read_text()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        seen["conf"] = next((entry.split(b"=", 1)[1].decode() for entry in environ
                             if entry.startswith(b"MALLOC_CONF=")), "")
        pipe.write(tar[len(tar) // 2:])

    output = tmp_path / f"{name}.sqfs"
    build_squashfs(write_tar, output, options)
    return output.read_bytes(), seen["maps"], seen["conf"]


def test_this_machine_has_jemalloc_and_auto_resolves_to_it():
    library = writer_malloc.find_library()
    assert library is not None, f"not installed: {writer_malloc.INSTALL_HINT}"
    assert writer_malloc.probe(library) is None
    assert writer_malloc.resolve(ConverterOptions()).writer_allocator == "jemalloc"


def test_a_conversion_runs_tar2sqfs_on_jemalloc_and_the_image_is_the_same_bytes(tmp_path):
    on_jemalloc = writer_malloc.resolve(OPTIONS)
    assert on_jemalloc.writer_allocator == "jemalloc"
    image, maps, conf = build(tmp_path, on_jemalloc, "jemalloc")
    assert writer_malloc.LIBRARY_NAME in maps
    assert gzip_engine.SHIM_NAME.split(".")[0] in maps  # the libdeflate shim beside it
    assert conf == writer_malloc.MALLOC_CONF
    plain, plain_maps, plain_conf = build(tmp_path, replace(OPTIONS, writer_allocator="glibc"),
                                          "glibc")
    assert writer_malloc.LIBRARY_NAME not in plain_maps and plain_conf == ""
    assert image == plain
    # Not loaded into the worker itself: only the child tar2sqfs runs on it.
    assert writer_malloc.LIBRARY_NAME not in Path("/proc/self/maps").read_text()


def test_the_sites_malloc_conf_and_ld_preload_are_kept(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/lib/x86_64-linux-gnu/libc.so.6")
    monkeypatch.setenv("MALLOC_CONF", "narenas:2")
    options = writer_malloc.resolve(OPTIONS)
    env = writer_malloc.preload(gzip_engine.tar2sqfs_environment(options), options)
    assert env is not None
    assert env["LD_PRELOAD"].split() == [str(gzip_engine.find_shim()),
                                         "/lib/x86_64-linux-gnu/libc.so.6",
                                         str(writer_malloc.find_library())]
    assert env["MALLOC_CONF"] == "narenas:2"
    glibc = replace(options, writer_allocator="glibc")
    assert writer_malloc.preload(None, glibc) is None
    # zstd images (no libdeflate shim) run on it too.
    zstd = replace(options, compressor="zstd", level=None)
    env = writer_malloc.preload(gzip_engine.tar2sqfs_environment(zstd), zstd)
    assert env is not None and env["LD_PRELOAD"].split()[-1] == str(writer_malloc.find_library())


def test_without_jemalloc_auto_is_glibc_and_jemalloc_is_a_start_up_error(tmp_path, monkeypatch,
                                                                           caplog):
    monkeypatch.setattr(writer_malloc, "LIBRARY_DIRS", (str(tmp_path),))
    with caplog.at_level(logging.INFO, logger=writer_malloc.__name__):
        assert writer_malloc.resolve(OPTIONS).writer_allocator == "glibc"
    assert "libjemalloc2" in caplog.text
    with pytest.raises(ConfigError, match='writerAllocator is "jemalloc" but libjemalloc.so.2 is '
                                          'not installed.*apt-get install libjemalloc2'):
        writer_malloc.resolve(replace(OPTIONS, writer_allocator="jemalloc"))
    [finding] = check_allocator(parse_config({}))
    assert finding.status == WARN and "libjemalloc2" in (finding.fix or "")
    [finding] = check_allocator(parse_config({"ConverterOptions": {"writerAllocator": "jemalloc"}}))
    assert finding.status == FAIL
    [finding] = check_allocator(parse_config({"ConverterOptions": {"writerAllocator": "glibc"}}))
    assert finding.status == OK


def test_a_library_that_does_not_load_is_found_out_by_the_probe(tmp_path, monkeypatch):
    broken = tmp_path / writer_malloc.LIBRARY_NAME
    broken.write_bytes(b"\x7fELF not really a library")
    monkeypatch.setattr(writer_malloc, "LIBRARY_DIRS", (str(tmp_path),))
    problem = writer_malloc.probe(broken)
    assert problem is not None and "tar2sqfs with jemalloc failed" in problem
    assert writer_malloc.resolve(OPTIONS).writer_allocator == "glibc"
    with pytest.raises(ConfigError, match="tar2sqfs with jemalloc failed"):
        writer_malloc.resolve(replace(OPTIONS, writer_allocator="jemalloc"))


def test_a_path_ld_preload_cannot_carry_is_refused(tmp_path):
    spaced = tmp_path / "with space" / writer_malloc.LIBRARY_NAME
    problem = writer_malloc.probe(spaced)
    assert problem is not None and "space or a colon" in problem


def test_doctor_reports_jemalloc_on_this_machine():
    [finding] = check_allocator(parse_config({}))
    assert finding.status == OK and str(writer_malloc.find_library()) in finding.detail


def test_tar2sqfs_really_allocates_with_it(tmp_path):
    """jemalloc's own statistics, printed at exit, prove it served tar2sqfs's allocations."""
    env = writer_malloc.preload(None, replace(OPTIONS, writer_allocator="jemalloc"))
    assert env is not None
    env["MALLOC_CONF"] = writer_malloc.MALLOC_CONF + ",stats_print:true"
    run = subprocess.run(["tar2sqfs", "-q", "-f", "-c", "gzip", "-j", "2", "--no-xattr",
                          str(tmp_path / "stats.sqfs")], input=tar_of_many_files(),
                         capture_output=True, timeout=120, env=env, check=True)
    stats = run.stderr.decode(errors="replace")
    assert "jemalloc statistics" in stats
    allocated = next(line for line in stats.splitlines() if line.startswith("Allocated:"))
    # Live at exit: tar2sqfs's tree and tables, far more than jemalloc's own start-up.
    assert int(allocated.split()[1].rstrip(",")) > 100_000
