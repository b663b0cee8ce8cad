"""CacheMaxBytes: LRU eviction over layers and conversions that never evicts an entry a
running job holds, in this process or another one."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagegw.cache import WorkerCaches
from imagegw.cache.eviction import evict
from imagegw.cache.layout import CacheLayout, WorkerPaths
from imagegw.domain.config import parse_config
from imagegw.domain.errors import ConfigError
from imagegw.domain.model import BuildJob
from imagegw.worker.build import Builder
from tests.support import layers as L
from tests.support.images import push_image
from tests.support.squashfs_tree import read_squashfs

KIB = 1024


def add_blob(caches: WorkerCaches, size: int, age: float) -> str:
    data = os.urandom(size)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path, _ = caches.blobs.ensure(digest, size, lambda out: out.write(data))
    caches.blobs.sidecar_path(digest, "index.json").write_text("{}")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return digest


def add_conversion(caches: WorkerCaches, tmp_path: Path, key: str, size: int, age: float) -> Path:
    built = tmp_path / f"{key}.built"
    built.write_bytes(os.urandom(size))
    path = caches.conversions.store(key, "squashfs", built)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_least_recently_used_entries_go_first_until_under_the_limit(tmp_path: Path) -> None:
    caches = WorkerCaches(CacheLayout(tmp_path / "cache"), max_bytes=250 * KIB)
    oldest = add_blob(caches, 100 * KIB, age=3000)
    old_image = add_conversion(caches, tmp_path, "a" * 64, 100 * KIB, age=2000)
    recent = add_blob(caches, 100 * KIB, age=1000)
    report = caches.evict()
    assert report is not None and report.evicted == 1
    assert not caches.blobs.has(oldest) and caches.blobs.sidecars(oldest) == []
    assert old_image.exists() and caches.blobs.has(recent)
    assert report.bytes_after <= 250 * KIB


def test_an_entry_leased_by_a_running_job_is_never_evicted(tmp_path: Path) -> None:
    caches = WorkerCaches(CacheLayout(tmp_path / "cache"), max_bytes=0)
    leased = add_blob(caches, 50 * KIB, age=3000)
    image = add_conversion(caches, tmp_path, "b" * 64, 50 * KIB, age=3000)
    other = add_blob(caches, 50 * KIB, age=3000)
    with caches.lease(digests=[leased], conversions=["b" * 64]):
        report = caches.evict()
    assert report is not None and report.evicted == 1 and report.kept_in_use == 2
    assert caches.blobs.has(leased) and image.exists() and not caches.blobs.has(other)


def test_a_lease_held_by_another_worker_process_protects_the_blob(tmp_path: Path) -> None:
    caches = WorkerCaches(CacheLayout(tmp_path / "cache"), max_bytes=0)
    digest = add_blob(caches, 10 * KIB, age=3000)
    script = (
        "import sys, time; from pathlib import Path\n"
        "from imagegw.cache import CacheLayout, WorkerCaches\n"
        "caches = WorkerCaches(CacheLayout(Path(sys.argv[1])))\n"
        "with caches.lease(digests=[sys.argv[2]]):\n"
        "    print('held', flush=True); sys.stdin.readline()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "cache"), digest],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        caches.evict()
        assert caches.blobs.has(digest)
    finally:
        assert holder.stdin is not None
        holder.stdin.write("done\n")
        holder.stdin.close()
        holder.wait(30)
    caches.evict()
    assert not caches.blobs.has(digest)


def test_entries_used_within_the_grace_period_stay(tmp_path: Path) -> None:
    caches = WorkerCaches(CacheLayout(tmp_path / "cache"))
    fresh = add_blob(caches, 10 * KIB, age=0)
    report = evict(caches.blobs, caches.conversions, caches.leases, 0, grace=60)
    assert report.evicted == 0 and report.kept_in_use == 1 and caches.blobs.has(fresh)


def test_unbounded_caches_are_never_evicted(tmp_path: Path) -> None:
    caches = WorkerCaches(CacheLayout(tmp_path / "cache"))
    add_blob(caches, 10 * KIB, age=3000)
    assert caches.evict() is None


def test_cache_max_bytes_is_read_and_checked() -> None:
    assert parse_config({"CacheMaxBytes": 10 * 1024**3}).cache_max_bytes == 10 * 1024**3
    assert parse_config({}).cache_max_bytes is None
    with pytest.raises(ConfigError, match="CacheMaxBytes"):
        parse_config({"CacheMaxBytes": -1})


def test_a_bounded_worker_keeps_its_cache_under_the_limit_across_builds(
        tmp_path, registry) -> None:
    config = parse_config({
        "CacheDirectory": str(tmp_path / "cache"), "ExpandDirectory": str(tmp_path / "expand"),
        "CacheMaxBytes": 0, "Locations": {"testreg": {"url": registry.url}},
        "Platforms": {"c": {"accesstype": "local", "local": {"imageDir": str(tmp_path / "img")}}},
    })
    builder = Builder(config, WorkerPaths(config.cache_dir, config.expand_dir))
    results = []
    for number in range(2):
        push_image(registry.url, f"evict/app{number}", "1",
                   [L.layer(L.file("data", os.urandom(20 * KIB)))])
        results.append(builder.build(BuildJob(job_id=f"j{number}", system="c",
                                              reference=f"testreg/evict/app{number}:1"),
                                     lambda progress: None))
    # Everything just used stays for the grace period; age it, as time would.
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file() and "leases" not in path.parts and "locks" not in path.parts:
            os.utime(path, (time.time() - 3600, time.time() - 3600))
    report = builder.caches.evict()
    assert report is not None and report.bytes_after == 0
    for result in results:  # published images are not the cache's to evict
        assert read_squashfs(tmp_path / "img" / result.image_file)["data"].size == 20 * KIB
