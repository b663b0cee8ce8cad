"""Issue 4, disk faults: a full scratch file system, a full layer cache, an image directory
that cannot be written. Real small tmpfs mounts (we run as root) and read-only bind mounts;
every job fails with a cause naming the directory, and leaves no scratch, no temporaries
and no file with a final name behind."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegw.cache.layout import WorkerPaths
from imagegw.domain import errors
from imagegw.domain.config import parse_config
from imagegw.domain.model import BuildJob
from imagegw.registry.client import RegistryClient
from imagegw.worker.build import Builder
from tests.support import layers as L
from tests.support.images import push_image
from tests.support.proxy import RegistryProxy

TMPFS_SIZE = "2m"
#: Incompressible, so neither the blob nor the squashfs image fits in TMPFS_SIZE.
PAYLOAD = random.Random(4).randbytes(4 * 1024 * 1024)


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = TMPFS_SIZE) -> Iterator[Path]:
    """A small tmpfs mounted at `path` for the test; unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a {size} tmpfs at {path} (the disk-fault tests need root "
                    f"and CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        _unmount(path)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` bind-mounted onto itself read-only."""
    path.mkdir(parents=True, exist_ok=True)
    for command in (("mount", "--bind", str(path), str(path)),
                    ("mount", "-o", "remount,ro,bind", str(path))):
        done = _run(*command)
        if done.returncode != 0:
            _unmount(path)
            pytest.fail(f"cannot make {path} a read-only bind mount ({' '.join(command)}): "
                        f"{done.stderr.strip()}")
    try:
        yield path
    finally:
        _unmount(path)


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[Path]:
    """`path` with the immutable attribute (chattr +i): not even root may add files."""
    path.mkdir(parents=True, exist_ok=True)
    done = _run("chattr", "+i", str(path))
    if done.returncode != 0:
        pytest.fail(f"cannot chattr +i {path}: {done.stderr.strip()}")
    try:
        yield path
    finally:
        _run("chattr", "-i", str(path))


def _unmount(path: Path) -> None:
    if _run("umount", str(path)).returncode != 0:
        _run("umount", "-l", str(path))


def builder_for(root: Path, registry_url: str, *, expand: Path | None = None,
                images: Path | None = None) -> Builder:
    config = parse_config({
        "CacheDirectory": str(root / "cache"),
        "ExpandDirectory": str(expand or root / "expand"),
        "Locations": {"testreg": {"url": registry_url}},
        "Platforms": {"cluster": {"accesstype": "local",
                                  "local": {"imageDir": str(images or root / "images")}}},
        "Limits": {"httpTimeout": 10, "httpRetries": 2},
    })
    return Builder(config, WorkerPaths(config.cache_dir, config.expand_dir))


@pytest.fixture(scope="module")
def big_image(registry):
    layer = L.layer(L.file("payload.bin", PAYLOAD), compression="none")
    return push_image(registry.url, "disk/big", "1", [layer])


def build(builder: Builder, job_id: str) -> Exception:
    with pytest.raises(errors.ImageGatewayError) as caught:
        builder.build(BuildJob(job_id=job_id, system="cluster", reference="testreg/disk/big:1"),
                      lambda progress: None)
    return caught.value


def leftovers(root: Path, image_id: str, *, expand: Path | None = None,
              images: Path | None = None) -> list[str]:
    """Scratch entries, temporaries and files with a final name: none may remain."""
    found = []
    expand = expand or root / "expand"
    if expand.exists():
        found += [f"scratch: {p.name}" for p in expand.iterdir() if p.name != "lost+found"]
    images = images or root / "images"
    if images.exists():
        found += [f"image dir: {name}" for name in os.listdir(images)]
    cache = root / "cache"
    if cache.exists():
        found += [f"cache temporary: {p.name}" for p in cache.rglob(".*")]
    for final in (f"{image_id}.squashfs", f"{image_id}.meta"):
        found += [f"final name: {p}" for p in root.rglob(final)]
    return found


def test_full_scratch_file_system_fails_naming_it_and_leaves_nothing(
        tmp_path, registry, big_image, record_property):
    # The image directory on the scratch's file system: the image is built in the scratch.
    with tmpfs(tmp_path / "small") as small:
        expand, images = small / "expand", small / "images"
        builder = builder_for(tmp_path, registry.url, expand=expand, images=images)
        started = time.monotonic()
        error = build(builder, "scratch-full")
        record_property("outcome", f"{type(error).__name__}: {error}"[:300])
        record_property("seconds", f"{time.monotonic() - started:.2f}")
        assert str(expand) in str(error)
        assert leftovers(tmp_path, big_image.config_digest[7:], expand=expand,
                         images=images) == []


def test_full_scratch_file_system_failure_says_the_disk_is_full(
        tmp_path, registry, big_image):
    with tmpfs(tmp_path / "small") as small:
        builder = builder_for(tmp_path, registry.url, expand=small / "expand",
                              images=small / "images")
        error = build(builder, "scratch-full-cause")
        assert "No space left on device" in str(error) or "is full" in str(error)


def test_an_image_directory_on_another_file_system_is_written_in_place(
        tmp_path, registry, big_image):
    # The converter writes straight into the image directory: a full scratch is no matter.
    with tmpfs(tmp_path / "expand"):
        builder = builder_for(tmp_path, registry.url)
        result = builder.build(BuildJob(job_id="in-place", system="cluster",
                                        reference="testreg/disk/big:1"), lambda progress: None)
        image = tmp_path / "images" / result.image_file
        assert image.stat().st_size > len(PAYLOAD) // 2
        assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(
            [result.image_file, result.meta_file])


def test_full_layer_cache_fails_naming_it_and_leaves_nothing(
        tmp_path, registry, big_image, record_property):
    with tmpfs(tmp_path / "cache") as cache:
        builder = builder_for(tmp_path, registry.url)
        started = time.monotonic()
        error = build(builder, "cache-full")
        record_property("outcome", f"{type(error).__name__}: {error}"[:300])
        record_property("seconds", f"{time.monotonic() - started:.2f}")
        assert "No space left on device" in str(error)
        assert str(cache) in str(error)
        assert not isinstance(error, errors.RegistryUnavailable), "the registry is fine"
        assert leftovers(tmp_path, big_image.config_digest[7:]) == []


@pytest.mark.parametrize("protect", [read_only, immutable], ids=["read-only-mount", "chattr+i"])
def test_unwritable_image_directory_fails_naming_it_and_leaves_nothing(
        tmp_path, registry, big_image, protect, record_property):
    with protect(tmp_path / "images") as images:
        builder = builder_for(tmp_path, registry.url)
        started = time.monotonic()
        error = build(builder, "unwritable")
        record_property("outcome", f"{type(error).__name__}: {error}"[:300])
        record_property("seconds", f"{time.monotonic() - started:.2f}")
        assert isinstance(error, errors.TransferFailed)
        assert str(images) in str(error)
        assert leftovers(tmp_path, big_image.config_digest[7:]) == []


def test_blob_download_onto_a_full_disk_names_the_directory_and_is_not_retried(
        tmp_path, registry, big_image, record_property):
    """The registry client blames the local disk, not the registry, and does not retry."""
    with tmpfs(tmp_path / "cache") as cache, RegistryProxy(registry.url) as proxy, \
            RegistryClient(proxy.url, "disk/big") as client:
        digest = big_image.layer_digests[0]
        size = len(L.layer(L.file("payload.bin", PAYLOAD), compression="none"))
        with open(cache / "blob", "wb", buffering=0) as out, \
                pytest.raises(errors.ConversionFailed) as caught:
            client.fetch_blob(digest, size, out)
        assert proxy.blob_gets() == 1
    record_property("outcome", f"ConversionFailed: {caught.value}"[:300])
    assert f"in {cache} failed: No space left on device" in str(caught.value)
    assert f"free space on the file system holding {cache}" in str(caught.value)


def test_unwritable_scratch_directory_fails_naming_it(
        tmp_path, registry, big_image, record_property):
    builder = builder_for(tmp_path, registry.url)
    with read_only(tmp_path / "expand") as expand:
        error = build(builder, "scratch-read-only")
    record_property("outcome", f"{type(error).__name__}: {error}"[:300])
    assert isinstance(error, errors.ConversionFailed)
    assert f"cannot create scratch space in {expand}: Read-only file system" in str(error)
    assert leftovers(tmp_path, big_image.config_digest[7:]) == []
