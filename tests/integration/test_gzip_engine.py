"""tar2sqfs's gzip compressor on libdeflate (services/common/imagegw/pipeline/native/sqfs_libdeflate.c):
the shim is built, really takes over the gzip blocks, writes images that read back exact
with both squashfs readers, and leaves every setting it cannot reproduce to zlib."""

from __future__ import annotations

import ctypes
import hashlib
import io
import logging
import os
import shutil
import subprocess
import tarfile
import zlib
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import pytest

from imagegw.domain.config import ConverterOptions
from imagegw.domain.errors import ConfigError
from imagegw.pipeline import gzip_engine
from imagegw.pipeline.squashfs import build_squashfs, tar2sqfs_command
from tests.support.squashfs_tree import read_squashfs, sha256

BLOCK = 131072
OPTIONS = ConverterOptions(compressor="gzip", level=6, block_size=BLOCK, jobs=2)


def text_block(seed: int, size: int = BLOCK) -> bytes:
    """Compressible, and different in every block (so that no two blocks are deduplicated)."""
    words = [hashlib.sha256(b"%d-%d" % (seed, n)).hexdigest()[:8].encode() for n in range(64)]
    out = bytearray()
    n = 0
    while len(out) < size:
        out += words[(n * 7 + seed) % 64] + b" " + words[(n * 13) % 64] + b"\n"
        n += 1
    return bytes(out[:size])


FILES = {
    "data/big.txt": b"".join(text_block(seed) for seed in range(6)),
    "data/random.bin": os.urandom(3 * BLOCK + 100),   # stored uncompressed, either way
    "etc/small.conf": b"key=value\n" * 50,             # a fragment
}


def tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build(tmp_path: Path, options: ConverterOptions, files: dict[str, bytes] = FILES) -> bytes:
    output = tmp_path / f"{options.gzip_engine}-{options.level}.sqfs"

    def write_tar(pipe: BinaryIO) -> None:
        pipe.write(tar_of(files))

    build_squashfs(write_tar, output, options)
    return output.read_bytes()


def libdeflate_zlib(block: bytes, level: int) -> bytes:
    library = ctypes.CDLL("libdeflate.so.0")
    library.libdeflate_alloc_compressor.restype = ctypes.c_void_p
    library.libdeflate_alloc_compressor.argtypes = [ctypes.c_int]
    library.libdeflate_zlib_compress.restype = ctypes.c_size_t
    library.libdeflate_zlib_compress.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                                 ctypes.c_void_p, ctypes.c_size_t]
    library.libdeflate_free_compressor.argtypes = [ctypes.c_void_p]
    compressor = library.libdeflate_alloc_compressor(level)
    out = ctypes.create_string_buffer(len(block))
    try:
        written = library.libdeflate_zlib_compress(compressor, block, len(block), out, len(block))
    finally:
        library.libdeflate_free_compressor(compressor)
    assert 0 < written < len(block)
    return out.raw[:written]


def zlib_block(block: bytes, level: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, 15)
    return compressor.compress(block) + compressor.flush()


def unsquashfs_files(image: Path, into: Path) -> dict[str, bytes]:
    """The image's files as squashfs-tools (another implementation than tar2sqfs's) reads them."""
    subprocess.run(["unsquashfs", "-no-progress", "-d", str(into), str(image)], check=True,
                   capture_output=True, timeout=120)
    return {str(path.relative_to(into)): path.read_bytes() for path in sorted(into.rglob("*"))
            if path.is_file()}


def test_this_machine_has_the_shim_and_auto_resolves_to_libdeflate():
    shim = gzip_engine.find_shim()
    assert shim is not None, f"not built: {gzip_engine.BUILD_HINT}"
    assert gzip_engine.probe(shim) is None
    assert gzip_engine.resolve(OPTIONS).gzip_engine == "libdeflate"


@pytest.mark.parametrize("level", [1, 6, 9])
def test_libdeflate_writes_the_gzip_blocks_and_the_image_reads_back_exact(tmp_path, level):
    options = replace(OPTIONS, level=level, gzip_engine="libdeflate")
    image = build(tmp_path, options)
    first = FILES["data/big.txt"][:BLOCK]
    assert libdeflate_zlib(first, level) in image, "the data block is libdeflate's"
    assert zlib_block(first, level) != libdeflate_zlib(first, level)
    assert zlib_block(first, level) not in image
    tree = read_squashfs(tmp_path / f"libdeflate-{level}.sqfs")
    assert {name: node.sha256 for name, node in tree.items() if node.type == "file"} == {
        name: sha256(data) for name, data in FILES.items()}
    assert unsquashfs_files(tmp_path / f"libdeflate-{level}.sqfs", tmp_path / "out") == FILES


def test_zlib_engine_is_tar2sqfs_as_built(tmp_path):
    zlib_options = replace(OPTIONS, gzip_engine="zlib")
    image = build(tmp_path, zlib_options)
    assert zlib_block(FILES["data/big.txt"][:BLOCK], 6) in image
    direct = tmp_path / "direct.sqfs"   # the same command line, in the worker's own environment
    subprocess.run(tar2sqfs_command(direct, zlib_options), input=tar_of(FILES), check=True,
                   capture_output=True, timeout=120, env={k: v for k, v in os.environ.items()
                                                          if k != "LD_PRELOAD"})
    assert image == direct.read_bytes()
    libdeflate = build(tmp_path, replace(OPTIONS, gzip_engine="libdeflate"))
    assert libdeflate != image
    # Slightly smaller, never larger by more than a rounding of the tables.
    assert len(libdeflate) <= len(image) + 4096


@pytest.mark.parametrize("settings", [
    ["-c", "gzip", "-X", "level=6,window=14"],     # libdeflate always uses a 32 KiB window
    ["-c", "gzip", "-X", "level=6,filtered"],      # zlib strategies: tried per block by zlib
    ["-c", "zstd", "-X", "level=3"],
    ["-c", "lz4"],
])
def test_settings_libdeflate_cannot_reproduce_are_left_to_zlib(tmp_path, settings):
    """With the shim loaded, these images are byte for byte what tar2sqfs writes without it."""
    shim = gzip_engine.find_shim()
    assert shim is not None
    images: list[bytes] = []
    for env in (None, {**os.environ, "LD_PRELOAD": str(shim)}):
        output = tmp_path / f"image-{len(images)}.sqfs"
        subprocess.run([shutil.which("tar2sqfs"), "-q", "-f", *settings, "-j", "2", "--no-xattr",
                        str(output)], input=tar_of(FILES), check=True, capture_output=True,
                       timeout=120, env=env)
        images.append(output.read_bytes())
    assert images[0] == images[1]


def test_gzip_images_are_unchanged_by_the_shim_only_when_the_engine_is_zlib(tmp_path):
    """The control for the test above: with default gzip settings the shim does change them."""
    assert build(tmp_path, replace(OPTIONS, gzip_engine="zlib")) != build(
        tmp_path, replace(OPTIONS, gzip_engine="libdeflate"))


def test_without_the_shim_auto_falls_back_to_zlib_and_libdeflate_is_refused(
        tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(gzip_engine, "SHIM_PATHS", (tmp_path / "missing.so",))
    with caplog.at_level(logging.WARNING, logger=gzip_engine.__name__):
        assert gzip_engine.resolve(OPTIONS).gzip_engine == "zlib"
    assert "scripts/setup" in caplog.text
    with pytest.raises(ConfigError, match="gzipEngine is \"libdeflate\" but .*not built"):
        gzip_engine.resolve(replace(OPTIONS, gzip_engine="libdeflate"))
    # A conversion asked to use libdeflate fails before tar2sqfs starts, naming the fix.
    with pytest.raises(ConfigError, match="scripts/setup"):
        build(tmp_path, replace(OPTIONS, gzip_engine="libdeflate"))
    assert gzip_engine.tar2sqfs_environment(OPTIONS) is None
    assert zlib_block(FILES["data/big.txt"][:BLOCK], 6) in build(tmp_path, OPTIONS)


def test_a_shim_that_does_not_load_is_found_out_by_the_probe(tmp_path, monkeypatch):
    broken = tmp_path / gzip_engine.SHIM_NAME
    broken.write_bytes(b"\x7fELF not really a library")
    monkeypatch.setattr(gzip_engine, "SHIM_PATHS", (broken,))
    problem = gzip_engine.probe(broken)
    assert problem is not None and "tar2sqfs with libdeflate failed" in problem
    assert gzip_engine.resolve(OPTIONS).gzip_engine == "zlib"
    with pytest.raises(ConfigError, match="tar2sqfs with libdeflate failed"):
        gzip_engine.resolve(replace(OPTIONS, gzip_engine="libdeflate"))


def test_a_shim_whose_path_ld_preload_cannot_carry_is_refused(tmp_path):
    spaced = tmp_path / "with space" / gzip_engine.SHIM_NAME
    spaced.parent.mkdir()
    shim = gzip_engine.find_shim()
    assert shim is not None
    shutil.copy(shim, spaced)
    problem = gzip_engine.probe(spaced)
    assert problem is not None and "space or a colon" in problem


def test_a_library_that_loads_but_changes_nothing_is_found_out_by_the_probe(tmp_path):
    """A shim that loads and does not take over (libsquashfs's compressor changed, say)."""
    source = tmp_path / "inert.c"
    source.write_text("int imagegw_inert_probe_symbol = 1;\n")
    inert = tmp_path / "inert.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(inert), str(source)], check=True, timeout=60)
    problem = gzip_engine.probe(inert)
    assert problem is not None and "did not take over" in problem


def test_the_engine_keeps_an_existing_ld_preload(tmp_path, monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/lib/x86_64-linux-gnu/libc.so.6")
    env = gzip_engine.tar2sqfs_environment(replace(OPTIONS, gzip_engine="libdeflate"))
    assert env is not None
    assert env["LD_PRELOAD"].split() == [str(gzip_engine.find_shim()), "/lib/x86_64-linux-gnu/libc.so.6"]
    assert gzip_engine.tar2sqfs_environment(replace(OPTIONS, compressor="zstd")) is None
    assert gzip_engine.tar2sqfs_environment(replace(OPTIONS, gzip_engine="zlib")) is None
