"""The content-addressed layer cache: one download per digest, never a partial file."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from imagegw.cache.layout import CacheLayout
from imagegw.domain.config import Limits, Platform
from imagegw.domain.errors import DigestMismatch
from imagegw.domain.reference import ImageReference
from imagegw.registry import BlobCache, RegistryClient, resolve_image
from tests.support.images import push_image
from tests.support.proxy import CorruptBody, RegistryProxy

DATA = os.urandom(256 * 1024)
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


def slow_writer(calls: list[int], pieces: int = 8, pause: float = 0.02):
    """A fetch that writes DATA in pieces, slowly, counting its calls."""

    def fetch(out: BinaryIO) -> None:
        calls.append(1)
        step = len(DATA) // pieces
        for start in range(0, len(DATA), step):
            out.write(DATA[start:start + step])
            out.flush()
            time.sleep(pause)

    return fetch


def test_concurrent_threads_download_a_blob_once_and_never_see_a_partial_file(tmp_path):
    cache = CacheLayout(tmp_path / "cache").blob_cache()
    calls: list[int] = []
    seen_partial: list[int] = []
    done = threading.Event()

    def watch() -> None:
        final = cache.path(DIGEST)
        while not done.is_set():
            if final.exists() and final.read_bytes() != DATA:
                seen_partial.append(1)

    results: list[tuple[Path, bool]] = []

    def worker() -> None:
        results.append(cache.ensure(DIGEST, len(DATA), slow_writer(calls)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    workers = [threading.Thread(target=worker) for _ in range(4)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=30)
    done.set()
    watcher.join(timeout=10)
    assert len(calls) == 1
    assert sorted(downloaded for _, downloaded in results) == [False, False, False, True]
    assert {path for path, _ in results} == {cache.path(DIGEST)}
    assert cache.path(DIGEST).read_bytes() == DATA
    assert not seen_partial
    assert not [p for p in cache.path(DIGEST).parent.iterdir() if p.name.startswith(".partial")]


_PROCESS_SCRIPT = """
import sys, time, pathlib
from imagegw.cache.layout import CacheLayout
root, digest, source, counter = sys.argv[1:5]
data = pathlib.Path(source).read_bytes()
def fetch(out):
    with open(counter, "a") as f:
        f.write("x")
    time.sleep(0.3)
    out.write(data)
path, downloaded = CacheLayout(pathlib.Path(root)).blob_cache().ensure(digest, len(data), fetch)
assert path.read_bytes() == data
"""


def test_concurrent_processes_download_a_blob_once(tmp_path):
    source = tmp_path / "source"
    source.write_bytes(DATA)
    counter = tmp_path / "counter"
    counter.touch()
    args = [sys.executable, "-c", _PROCESS_SCRIPT, str(tmp_path / "cache"), DIGEST, str(source),
            str(counter)]
    processes = [subprocess.Popen(args) for _ in range(3)]
    assert [p.wait(timeout=60) for p in processes] == [0, 0, 0]
    assert counter.read_text() == "x"


def test_cached_blob_is_not_fetched_again(tmp_path):
    cache = CacheLayout(tmp_path).blob_cache()
    calls: list[int] = []
    first = cache.ensure(DIGEST, len(DATA), slow_writer(calls, pause=0))
    second = cache.ensure(DIGEST, len(DATA), slow_writer(calls, pause=0))
    assert first == (cache.path(DIGEST), True)
    assert second == (cache.path(DIGEST), False)
    assert len(calls) == 1
    assert cache.has(DIGEST)


def test_cached_blob_of_the_wrong_size_is_fetched_again(tmp_path):
    cache = CacheLayout(tmp_path).blob_cache()
    cache.path(DIGEST).write_bytes(DATA[:100])
    calls: list[int] = []
    path, downloaded = cache.ensure(DIGEST, len(DATA), slow_writer(calls, pause=0))
    assert downloaded and len(calls) == 1
    assert path.read_bytes() == DATA


def test_wrong_bytes_are_never_published(tmp_path):
    cache = CacheLayout(tmp_path).blob_cache()

    def liar(out: BinaryIO) -> None:
        out.write(b"x" * len(DATA))

    with pytest.raises(DigestMismatch):
        cache.ensure(DIGEST, len(DATA), liar)
    assert not cache.has(DIGEST)
    assert list(cache.path(DIGEST).parent.iterdir()) == []


def test_failed_fetch_leaves_no_temporary_file(tmp_path):
    cache = CacheLayout(tmp_path).blob_cache()

    def broken(out: BinaryIO) -> None:
        out.write(DATA[:10])
        raise OSError("network went away")

    with pytest.raises(OSError):
        cache.ensure(DIGEST, len(DATA), broken)
    assert list(cache.path(DIGEST).parent.iterdir()) == []


def _resolve_and_fetch(url: str, cache: BlobCache) -> list[bool]:
    platform = Platform(name="t", access_type="local", image_dir="/unused")
    ref = ImageReference(location=url, registry_url=url, repository="test/cached", tag="v1",
                         digest=None)
    limits = Limits(http_timeout=10.0)
    with RegistryClient(url, "test/cached", limits=limits) as client:
        image = resolve_image(client, ref, platform, limits, cache=cache)
        downloads = []
        for layer in image.layers:
            def fetch(out: BinaryIO, layer=layer) -> None:
                client.fetch_blob(layer.digest, layer.size, out)
            downloads.append(cache.ensure(layer.digest, layer.size, fetch)[1])
    return downloads


def test_refetch_with_everything_cached_makes_zero_blob_gets(registry, tmp_path):
    push_image(registry.url, "test/cached", "v1", [os.urandom(5000), os.urandom(7000)])
    cache = CacheLayout(tmp_path / "cache").blob_cache()
    with RegistryProxy(registry.url) as proxy:
        assert _resolve_and_fetch(proxy.url, cache) == [True, True]
        assert proxy.blob_gets() == 3  # the config and two layers
        proxy.clear()
        assert _resolve_and_fetch(proxy.url, cache) == [False, False]
        assert proxy.blob_gets() == 0
        assert proxy.count("GET", r"/manifests/") == 1


def test_a_corrupt_image_config_fails_the_resolve_and_is_not_cached(registry, tmp_path):
    # The config is hashed once, by the download, on its way into the cache.
    pushed = push_image(registry.url, "test/cached", "v1", [os.urandom(5000)])
    cache = CacheLayout(tmp_path / "cache").blob_cache()
    with RegistryProxy(registry.url) as proxy:
        proxy.faults.append(CorruptBody(rf"/blobs/{pushed.config_digest}$"))
        with pytest.raises(DigestMismatch, match="hashes to"):
            _resolve_and_fetch(proxy.url, cache)
        assert not cache.has(pushed.config_digest)
        assert _resolve_and_fetch(proxy.url, cache) == [True]
        assert cache.path(pushed.config_digest).read_bytes() == pushed.config


def test_corrupt_download_through_the_cache_publishes_nothing(registry, tmp_path):
    pushed = push_image(registry.url, "test/corrupt", "v1", [os.urandom(5000)])
    cache = CacheLayout(tmp_path).blob_cache()
    digest = pushed.layer_digests[0]
    with RegistryProxy(registry.url) as proxy, \
            RegistryClient(proxy.url, "test/corrupt", limits=Limits(http_timeout=10.0)) as client:
        proxy.faults.append(CorruptBody())

        def fetch(out: BinaryIO) -> None:
            client.fetch_blob(digest, 5000, out)

        with pytest.raises(DigestMismatch):
            cache.ensure(digest, 5000, fetch)
        assert not cache.has(digest)
        path, downloaded = cache.ensure(digest, 5000, fetch)
        assert downloaded and len(path.read_bytes()) == 5000
