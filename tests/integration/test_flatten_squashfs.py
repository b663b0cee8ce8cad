"""Layers to squashfs with the real tar2sqfs, read back with sqfs2tar and compared whole.

The compiled flatten (native_onepass.py, native_flat.py) is the default when it is
built; tests that take the `python_flatten` fixture run the Python paths (one pass, two
passes) instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest
import zstandard

from imagegw.domain.config import ConverterOptions, Limits
from imagegw.domain.errors import ContentRejected, ConversionFailed
from imagegw.pipeline import squashfs
from imagegw.pipeline.layer import FileLayer, Layer
from imagegw.pipeline.runtime_files import AddedLayers
from imagegw.pipeline.squashfs import (
    FlattenStats,
    build_squashfs,
    flatten_to_squashfs,
    tar2sqfs_command,
)
from imagegw.pipeline.tarstream import TarWriter
from tests.support.compiled_flatten import BUILT
from tests.support.layers import (
    device,
    digest,
    dir,
    fifo,
    file,
    hardlink,
    layer,
    opaque,
    raw_member,
    symlink,
    tar_bytes,
    whiteout,
    write_blob,
)
from tests.support.squashfs_tree import read_squashfs, sha256, summary

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ConverterOptions(compressor="gzip", jobs=2)
LIMITS = Limits()


@pytest.fixture
def python_flatten(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flatten as it runs without the extension."""
    monkeypatch.setattr(squashfs, "native_flat", None)


def build(tmp_path: Path, *blobs: bytes, options: ConverterOptions = OPTIONS,
          limits: Limits = LIMITS) -> tuple[Path, FlattenStats]:
    paths = [write_blob(tmp_path, blob) for blob in blobs]
    output = tmp_path / "image.squashfs"
    layers = [FileLayer.of(path, digest(blob)) for path, blob in zip(paths, blobs, strict=True)]
    stats = flatten_to_squashfs(layers, output, options=options, limits=limits)
    return output, stats


def image_layers() -> list[bytes]:
    base = layer(
        dir("bin", 0o755, uid=1000),
        file("bin/sh", b"#!shell", 0o755, uid=1000, gid=1000),
        file("bin/su", b"setuid tool", 0o4755),
        file("bin/wall", b"setgid tool", 0o2755),
        hardlink("bin/sh-link", "bin/sh"),
        dir("tmp", 0o1777),
        dir("etc"),
        file("etc/hosts", b"127.0.0.1 localhost\n"),
        file("etc/old.conf", b"old"),
        dir("var/cache/apt"),
        file("var/cache/apt/pkgcache.bin", b"cache"),
        symlink("lib", "usr/lib"),
        dir("usr/lib"),
        device("dev/null"),
        fifo("run/initctl"),
        compression="gzip",
    )
    update = layer(
        whiteout("etc/old.conf"),
        opaque("var/cache/apt"),
        file("var/cache/apt/fresh", b"fresh"),
        file("lib/libc.so.6", b"libc"),  # through the symlink, into usr/lib
        hardlink("etc/hosts.orig", "etc/hosts"),
        file("bin/sh", b"#!new shell", 0o755),  # the old bytes stay with bin/sh-link
        compression="zstd",
    )
    top = layer(
        dir("opt/app", 0o750),
        file("opt/app/run", b"run", 0o700),
        symlink("opt/app/current", "/opt/app"),
        file("./etc/motd", "grüße\n".encode()),
        compression="none",
    )
    return [base, update, top]


def test_image_from_gzip_zstd_and_plain_layers_holds_the_flattened_tree(tmp_path: Path) -> None:
    output, stats = build(tmp_path, *image_layers())
    tree = read_squashfs(output)

    def f(data: bytes, mode: int = 0o644) -> tuple[str, int, str]:
        return ("file", mode, sha256(data))

    d = ("dir", 0o755, "")
    assert summary(tree) == {
        "bin": d,
        "bin/sh": f(b"#!new shell", 0o755),
        "bin/sh-link": f(b"#!shell", 0o755),
        "bin/su": f(b"setuid tool", 0o755),
        "bin/wall": f(b"setgid tool", 0o755),
        "tmp": ("dir", 0o1777, ""),
        "etc": d,
        "etc/hosts": f(b"127.0.0.1 localhost\n"),
        "etc/hosts.orig": f(b"127.0.0.1 localhost\n"),
        "etc/motd": f("grüße\n".encode()),
        "var": d,
        "var/cache": d,
        "var/cache/apt": d,
        "var/cache/apt/fresh": f(b"fresh"),
        "lib": ("symlink", 0o777, "usr/lib"),
        "usr": d,
        "usr/lib": d,
        "usr/lib/libc.so.6": f(b"libc"),
        "opt": d,
        "opt/app": ("dir", 0o750, ""),
        "opt/app/run": f(b"run", 0o700),
        "opt/app/current": ("symlink", 0o777, "/opt/app"),
    }
    assert {(node.uid, node.gid) for node in tree.values()} == {(0, 0)}
    assert tree["etc/hosts"].inode == tree["etc/hosts.orig"].inode
    assert tree["bin/sh"].inode != tree["bin/sh-link"].inode
    assert stats == FlattenStats(files=9, dirs=10, symlinks=2, hardlinks=1, dropped=2,
                                 data_bytes=stats.data_bytes)
    assert stats.data_bytes == sum(
        len(data) for data in (b"#!new shell", b"#!shell", b"setuid tool", b"setgid tool",
                               b"127.0.0.1 localhost\n", "grüße\n".encode(), b"fresh",
                               b"libc", b"run"))


def test_image_root_is_root_owned_0755(tmp_path: Path) -> None:
    output, _ = build(tmp_path, layer(dir("./", 0o700, uid=1000), file("a")))
    listing = subprocess.run(["unsquashfs", "-lln", "-d", "", str(output)], check=True,
                             capture_output=True, text=True, timeout=60).stdout
    root_line = listing.splitlines()[0].split()
    assert root_line[0:2] == ["drwxr-xr-x", "0/0"]


def test_setuid_bits_are_kept_when_the_site_asks(tmp_path: Path) -> None:
    options = ConverterOptions(compressor="gzip", keep_setuid=True, jobs=2)
    output, _ = build(tmp_path, layer(file("su", b"x", 0o4755)), options=options)
    assert read_squashfs(output)["su"].mode == 0o4755


def test_compressor_level_and_block_size_reach_the_image(tmp_path: Path) -> None:
    options = ConverterOptions(compressor="zstd", level=5, block_size=65536, jobs=1)
    output, _ = build(tmp_path, layer(file("a", b"a" * 100_000)), options=options)
    info = subprocess.run(["unsquashfs", "-s", str(output)], check=True, capture_output=True,
                          text=True, timeout=60).stdout
    assert "Compression zstd" in info
    assert "Block size 65536" in info


def test_site_extra_arguments_are_appended_to_the_safe_defaults() -> None:
    options = ConverterOptions(extra_args=("--exportable",))
    command = tar2sqfs_command(Path("/out/image.squashfs"), options)
    assert command[-2:] == ["--exportable", "/out/image.squashfs"]
    assert {"--no-xattr", "--no-skip", "uid=0,gid=0,mode=0755,mtime=0"} <= set(command)


def test_compressor_queue_length_changes_speed_not_the_image(tmp_path: Path) -> None:
    """Why the queue length (like `jobs`) is left out of the conversion key."""
    content = layer(*(file(f"d{n % 7}/f{n}", os.urandom(n * 997 % 300_000) * 2) for n in range(60)))
    images = []
    for backlog in (1, 500):
        options = ConverterOptions(compressor="gzip", level=6, jobs=2, queue_backlog=backlog)
        command = tar2sqfs_command(Path("/i"), options)
        assert command[command.index("-Q") + 1] == str(backlog)
        (tmp_path / str(backlog)).mkdir()
        output, _ = build(tmp_path / str(backlog), content, options=options)
        images.append(output.read_bytes())
    assert images[0] == images[1]


def test_failing_tar2sqfs_raises_conversion_failed_with_its_message(tmp_path: Path) -> None:
    options = ConverterOptions(compressor="gzip", extra_args=("--no-such-option",))
    with pytest.raises(ConversionFailed, match="no-such-option"):
        build(tmp_path, layer(file("a", os.urandom(300_000))), options=options)
    assert not list(tmp_path.glob("*image.squashfs*"))


def test_content_rejected_while_streaming_leaves_no_image(tmp_path: Path) -> None:
    output = tmp_path / "image.squashfs"

    def write_tar(out: BinaryIO) -> None:
        TarWriter(out).file("big", mode=0o644, mtime=0, size=10 << 20,
                            copy=lambda o: None if o.write(os.urandom(1 << 20)) else None)
        raise ContentRejected("layer sha256:x is hostile")

    with pytest.raises(ContentRejected):
        build_squashfs(write_tar, output, OPTIONS)
    assert list(tmp_path.iterdir()) == []


def test_hostile_layer_is_refused_before_any_image_is_built(tmp_path: Path) -> None:
    hostile = layer(file("a"), hardlink("b", "missing"))
    with pytest.raises(ContentRejected, match=digest(hostile)):
        build(tmp_path, hostile)
    assert not (tmp_path / "image.squashfs").exists()


def test_layer_decompressing_beyond_the_unpacked_limit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ContentRejected, match="beyond the 4096-byte cap"):
        build(tmp_path, layer(file("a", bytes(5000))), limits=Limits(max_unpacked_bytes=4096))


def test_image_data_beyond_the_unpacked_limit_is_refused(tmp_path: Path) -> None:
    blobs = layer(file("a", bytes(3500))), layer(file("b", bytes(3500)))
    with pytest.raises(ContentRejected, match="7000 bytes of file data; the limit is 6000"):
        build(tmp_path, *blobs, limits=Limits(max_unpacked_bytes=6000))


def test_progress_goes_from_zero_to_the_total(tmp_path: Path, python_flatten: None) -> None:
    blob = layer(file("a", os.urandom(3 << 20)), file("b", b"b"))
    path = write_blob(tmp_path, blob)
    reports: list[tuple[int, int]] = []
    stats = flatten_to_squashfs(
        [FileLayer.of(path, digest(blob))], tmp_path / "i.squashfs", options=OPTIONS,
        limits=Limits(), on_progress=lambda done, total: reports.append((done, total)))
    # One pass: the compressed bytes read (the file data is known only at the end).
    assert stats.one_pass
    assert reports[0] == (0, len(blob)) and reports[-1] == (len(blob), len(blob))
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)
    # Two passes (the index known): the file data written.
    reports.clear()
    flatten_to_squashfs(
        [FileLayer.of(path, digest(blob))], tmp_path / "j.squashfs", options=OPTIONS,
        limits=Limits(), indexes=stats.indexes,
        on_progress=lambda done, total: reports.append((done, total)))
    total = (3 << 20) + 1
    assert reports[0] == (0, total) and reports[-1] == (total, total)
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)


@pytest.mark.skipif(not BUILT, reason="the compiled flatten is not built here")
def test_compiled_progress_follows_the_one_pass_then_a_fallback(tmp_path: Path) -> None:
    small = [file(f"s/{number}", b"s") for number in range(200)]
    blob = layer(*small, file("a", os.urandom(3 << 20)), file("b", b"b"))
    path = write_blob(tmp_path, blob)
    reports: list[tuple[int, int]] = []
    stats = flatten_to_squashfs(
        [FileLayer.of(path, digest(blob))], tmp_path / "i.squashfs", options=OPTIONS,
        limits=Limits(), on_progress=lambda done, total: reports.append((done, total)))
    assert stats.compiled and stats.one_pass
    # One pass: the compressed bytes read.
    assert reports[0] == (0, len(blob)) and reports[-1] == (len(blob), len(blob))
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)
    # A one pass that fails (a member below a symlinked parent): the compressed bytes
    # read, the layers not indexed yet, then the file data written; never back.
    blobs = image_layers()
    layers = [FileLayer.of(write_blob(tmp_path, data), digest(data)) for data in blobs]
    reports.clear()
    stats = flatten_to_squashfs(layers, tmp_path / "j.squashfs", options=OPTIONS,
                                limits=Limits(),
                                on_progress=lambda done, total: reports.append((done, total)))
    assert stats.compiled and not stats.one_pass
    assert reports[0] == (0, sum(len(data) for data in blobs))
    assert reports[-1][0] == reports[-1][1] > sum(len(data) for data in blobs)
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)
    assert [path.name for path in tmp_path.iterdir() if "partial" in path.name] == []


class _RandomIsh:
    """A file-like source of `size` bytes of incompressible data, hashed as it goes."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.hash = hashlib.sha256()

    def read(self, count: int = -1) -> bytes:
        count = self.left if count < 0 else min(count, self.left)
        data = os.urandom(count)
        self.left -= count
        self.hash.update(data)
        return data


def test_large_layer_streams_through_with_bounded_memory(tmp_path: Path) -> None:
    size = 200 * 2**20
    blob = tmp_path / "big.tar.zst"
    source = _RandomIsh(size)
    with open(blob, "wb") as raw, \
            zstandard.ZstdCompressor(level=1).stream_writer(raw) as compressed, \
            tarfile.open(fileobj=compressed, mode="w|") as archive:
        info = tarfile.TarInfo("data/big.bin")
        info.size = size
        archive.addfile(info, source)
    output = tmp_path / "big.squashfs"
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from imagegw.domain.config import ConverterOptions, Limits\n"
        "from imagegw.pipeline.layer import FileLayer\n"
        "from imagegw.pipeline.squashfs import flatten_to_squashfs\n"
        "stats = flatten_to_squashfs([FileLayer.of(Path(sys.argv[1]), 'sha256:big')],\n"
        "    Path(sys.argv[2]), options=ConverterOptions(compressor='lz4', jobs=2),\n"
        "    limits=Limits())\n"
        # VmHWM: this process's peak resident set (ru_maxrss would include the parent's)
        "peak = [line for line in open('/proc/self/status') if line.startswith('VmHWM')]\n"
        "print(json.dumps({'peak_kib': int(peak[0].split()[1]), 'bytes': stats.data_bytes}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(blob), str(output)], cwd=ROOT,
                            check=True, capture_output=True, text=True, timeout=240)
    report = json.loads(result.stdout)
    assert report["bytes"] == size
    assert report["peak_kib"] < 100 * 1024  # the layer is 200 MiB; nothing holds it whole
    node = read_squashfs(output)["data/big.bin"]
    assert (node.size, node.sha256) == (size, source.hash.hexdigest())


def mtimes(image: Path) -> dict[str, int]:
    """path -> mtime of every entry of a squashfs image (through sqfs2tar)."""
    listing = subprocess.run(["sqfs2tar", "--no-xattr", str(image)], capture_output=True,
                             check=True, timeout=120).stdout
    with tarfile.open(fileobj=io.BytesIO(listing), mode="r:") as archive:
        return {info.name.strip("./"): int(info.mtime) for info in archive
                if info.name.strip("./")}


def common_layers() -> list[bytes]:
    """What most images look like: no member below a symlink, links within a layer."""
    base = layer(
        dir("usr", mtime=100), dir("usr/bin", mtime=101), symlink("bin", "usr/bin", mtime=102),
        file("usr/bin/sh", b"#!shell", 0o755, mtime=103), hardlink("usr/bin/dash", "usr/bin/sh"),
        dir("etc", mtime=104), file("etc/hosts", b"127.0.0.1 localhost\n", mtime=105),
        dir("var/cache/apt", mtime=106), file("var/cache/apt/pkgcache.bin", b"cache"),
        compression="gzip",
    )
    update = layer(
        dir("etc", 0o750, mtime=200), whiteout("etc/hosts"), opaque("var/cache/apt"),
        file("var/cache/apt/fresh", b"fresh", mtime=201), hardlink("usr/bin/sh2", "usr/bin/sh"),
        compression="zstd",
    )
    top = layer(dir("opt/app", 0o700, mtime=300), file("opt/app/run", b"run", 0o755, mtime=301),
                symlink("opt/app/current", "/opt/app", mtime=302), compression="none")
    return [base, update, top]


def test_one_pass_image_equals_the_two_pass_image_of_the_same_layers(
        tmp_path: Path, python_flatten: None) -> None:
    blobs = common_layers()
    layers = [FileLayer.of(write_blob(tmp_path, blob), digest(blob)) for blob in blobs]
    one = flatten_to_squashfs(layers, tmp_path / "one.squashfs", options=OPTIONS, limits=LIMITS)
    two = flatten_to_squashfs(layers, tmp_path / "two.squashfs", options=OPTIONS, limits=LIMITS,
                              indexes=one.indexes)
    assert one.one_pass and not two.one_pass
    assert dataclasses.replace(one, one_pass=False) == two
    tree = read_squashfs(tmp_path / "one.squashfs")
    assert tree == read_squashfs(tmp_path / "two.squashfs")
    assert mtimes(tmp_path / "one.squashfs") == mtimes(tmp_path / "two.squashfs")
    # Directories written after their files keep their own mode and mtime.
    assert tree["etc"].mode == 0o750 and mtimes(tmp_path / "one.squashfs")["etc"] == 200
    assert "etc/hosts" not in tree and "var/cache/apt/pkgcache.bin" not in tree
    assert tree["usr/bin/sh"].inode == tree["usr/bin/dash"].inode == tree["usr/bin/sh2"].inode


def test_layers_one_pass_cannot_vouch_for_are_flattened_in_two_passes(
        tmp_path: Path, python_flatten: None) -> None:
    # image_layers() writes below the symlink lib -> usr/lib: the one pass is dropped,
    # and the image is the exact one (see the first test for its whole tree).
    output, stats = build(tmp_path, *image_layers())
    assert not stats.one_pass
    assert summary(read_squashfs(output))["usr/lib/libc.so.6"] == ("file", 0o644, sha256(b"libc"))
    assert [path.name for path in tmp_path.iterdir() if "partial" in path.name] == []


@pytest.mark.skipif(not BUILT, reason="the compiled flatten is not built here")
def test_any_layers_take_the_compiled_one_pass_and_known_indexes_the_two_pass_one(
        tmp_path: Path) -> None:
    # Each layer is decompressed once either way: large files and many small ones alike.
    large = layer(file("big", bytes(20 << 20)), file("small", b"s"))
    many = layer(*(file(f"d/{number}", b"x" * 100) for number in range(1000)))
    output, stats = build(tmp_path, many, large)
    assert stats.one_pass and stats.compiled
    output.unlink()
    output, stats = build(tmp_path, large, many)
    assert stats.one_pass and stats.compiled
    assert read_squashfs(output)["big"].size == 20 << 20
    # Every index known: no decompression is saved by one pass, so the two-pass one runs.
    layers = [FileLayer.of(write_blob(tmp_path, blob), digest(blob)) for blob in (large, many)]
    output.unlink()
    again = flatten_to_squashfs(layers, output, options=OPTIONS, limits=LIMITS,
                                indexes=stats.indexes)
    assert again.compiled and not again.one_pass
    assert dataclasses.replace(again, one_pass=True) == stats


class _Stalled:
    """A layer whose blob never arrives until `release` is set (a stalled download)."""

    def __init__(self, release: threading.Event) -> None:
        self.name = "sha256:stalled"
        self.size = 1000
        self.release = release
        self.waited_out = False

    def open(self) -> BinaryIO:
        layer = self

        class Reader(io.RawIOBase):
            def read(self, size: int = -1) -> bytes:
                layer.waited_out = not layer.release.wait(120)
                return b""

        return Reader()  # type: ignore[return-value]


def images_left(directory: Path) -> list[str]:
    return [path.name for path in directory.iterdir()
            if path.name.endswith(".squashfs") or "partial" in path.name]


@pytest.mark.skipif(not BUILT, reason="the compiled flatten is not built here")
def test_a_compiled_one_pass_stopped_midway_leaves_no_partial_image(tmp_path: Path) -> None:
    # The one pass passes the data limit in the second layer it reads: the two-pass
    # flatten gives the verdict (the image is over the limit), and nothing is left.
    older, newer = layer(file("a", os.urandom(3 << 20))), layer(file("b", os.urandom(3 << 20)))
    with pytest.raises(ContentRejected, match="the limit is 5242880"):
        build(tmp_path, older, newer, limits=Limits(max_unpacked_bytes=5 << 20))
    assert images_left(tmp_path) == []
    # A member refused in the middle of a layer, after files of it went out.
    hostile = layer(file("x", os.urandom(2 << 20)), raw_member("../escape", data=b"x"),
                    file("y", b"y"))
    with pytest.raises(ContentRejected, match="'..'"):
        build(tmp_path, layer(file("base", b"b")), hostile)
    assert images_left(tmp_path) == []


class _FailingDownload:
    """A layer whose download fails after `good` bytes (the reads raise)."""

    def __init__(self, blob: bytes, good: int) -> None:
        self.name = digest(blob)
        self.size = len(blob)
        self.blob = blob
        self.good = good

    def open(self) -> BinaryIO:
        layer = self

        class Reader(io.RawIOBase):
            offset = 0

            def read(self, size: int = -1) -> bytes:
                if self.offset >= layer.good:
                    raise ConversionFailed("the download of this layer failed")
                data = layer.blob[self.offset:min(self.offset + max(size, 1), layer.good)]
                self.offset += len(data)
                return data

        return Reader()  # type: ignore[return-value]


@pytest.mark.skipif(not BUILT, reason="the compiled flatten is not built here")
def test_a_failed_download_stops_the_compiled_one_pass(tmp_path: Path) -> None:
    blob = layer(*(file(f"d/{number}", os.urandom(4096)) for number in range(400)))
    base = layer(file("base", b"b"))
    layers: list[Layer] = [FileLayer.of(write_blob(tmp_path, base), digest(base)),
                           _FailingDownload(blob, len(blob) // 2)]
    with pytest.raises(ConversionFailed, match="download of this layer failed"):
        flatten_to_squashfs(layers, tmp_path / "i.squashfs", options=OPTIONS, limits=LIMITS)
    assert images_left(tmp_path) == []


@pytest.mark.skipif(not BUILT, reason="the compiled flatten is not built here")
def test_a_refused_layer_ends_the_compiled_flatten_without_waiting_for_other_layers(
        tmp_path: Path) -> None:
    hostile = layer(file("a"), raw_member("../escape", data=b"x"))
    release = threading.Event()
    stalled = _Stalled(release)
    try:
        with pytest.raises(ContentRejected, match="'..'"):
            flatten_to_squashfs([stalled, FileLayer.of(write_blob(tmp_path, hostile),
                                                       digest(hostile))],
                                tmp_path / "i.squashfs", options=OPTIONS, limits=LIMITS)
        assert not release.is_set() and not stalled.waited_out
    finally:
        release.set()
    assert not (tmp_path / "i.squashfs").exists()


@pytest.mark.skipif(not BUILT, reason="the compiled flatten is not built here")
def test_runtime_files_layers_go_through_the_compiled_flatten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    added = AddedLayers(base=tar_bytes(dir("etc"), file("etc/base", b"base")),
                        top=tar_bytes(dir(".rt"), file(".rt/env", b"top")))
    blobs = common_layers()
    layers = [FileLayer.of(write_blob(tmp_path, blob), digest(blob)) for blob in blobs]
    made: dict[int, bytes] = {}
    compiled = flatten_to_squashfs(layers, tmp_path / "c.squashfs", options=OPTIONS,
                                   limits=LIMITS, added=added, on_index=made.__setitem__)
    with monkeypatch.context() as patch:
        patch.setattr(squashfs, "native_flat", None)
        python = flatten_to_squashfs(layers, tmp_path / "p.squashfs", options=OPTIONS,
                                     limits=LIMITS, added=added)
    assert compiled.compiled and not python.compiled
    # The image's own layers' indexes, numbered as the image numbers them.
    assert sorted(made) == [0, 1, 2] and tuple(made[n] for n in range(3)) == \
        compiled.indexes[1:-1]
    tree = read_squashfs(tmp_path / "c.squashfs")
    assert tree == read_squashfs(tmp_path / "p.squashfs")
    assert tree["etc/base"].sha256 == sha256(b"base") and tree[".rt/env"].sha256 == sha256(b"top")


@pytest.mark.skipif(not BUILT, reason="the compiled flatten is not built here")
def test_compiled_image_equals_the_python_image_of_the_same_layers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for blobs in (common_layers(), image_layers()):
        layers = [FileLayer.of(write_blob(tmp_path, blob), digest(blob)) for blob in blobs]
        compiled = flatten_to_squashfs(layers, tmp_path / "c.squashfs", options=OPTIONS,
                                       limits=LIMITS)
        # The indexes it kept give the same image again, without indexing.
        again = flatten_to_squashfs(layers, tmp_path / "k.squashfs", options=OPTIONS,
                                    limits=LIMITS, indexes=compiled.indexes,
                                    on_index=lambda number, index: pytest.fail("indexed"))
        with monkeypatch.context() as patch:
            patch.setattr(squashfs, "native_flat", None)
            python = flatten_to_squashfs(layers, tmp_path / "p.squashfs", options=OPTIONS,
                                         limits=LIMITS)
        assert compiled.compiled and again.compiled and not python.compiled
        assert dataclasses.replace(compiled, compiled=False, one_pass=python.one_pass) \
            == python == dataclasses.replace(again, compiled=False, one_pass=python.one_pass)
        assert compiled.indexes == python.indexes == again.indexes
        tree = read_squashfs(tmp_path / "c.squashfs")
        assert tree == read_squashfs(tmp_path / "p.squashfs") == read_squashfs(
            tmp_path / "k.squashfs")
        assert mtimes(tmp_path / "c.squashfs") == mtimes(tmp_path / "p.squashfs")
        for name in ("c", "k", "p"):
            (tmp_path / f"{name}.squashfs").unlink()


def test_early_writeback_stops_with_the_build_and_leaves_no_descriptor(tmp_path: Path) -> None:
    from imagegw.pipeline.writeback import EarlyWriteback

    def descriptors() -> set[str]:
        return set(os.listdir("/proc/self/fd"))

    before = descriptors()
    target = tmp_path / "growing"
    with EarlyWriteback(target, interval=0.01), target.open("wb") as out:
        for _ in range(20):
            out.write(os.urandom(1 << 16))
            out.flush()
            time.sleep(0.005)
    assert not [thread for thread in threading.enumerate() if thread.name == "writeback"]
    assert descriptors() == before
    with EarlyWriteback(tmp_path / "never-made", interval=0.01):
        time.sleep(0.05)
    assert descriptors() == before
