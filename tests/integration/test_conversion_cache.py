"""The conversion cache: a second pull of one image publishes the stored conversion
without downloading or converting anything; other converter options convert again."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from imagegw.cache.layout import WorkerPaths
from imagegw.domain.config import parse_config
from imagegw.domain.model import BuildJob
from imagegw.publish import publisher_for
from imagegw.worker.build import Builder
from tests.support import layers as L
from tests.support.images import push_image
from tests.support.proxy import RegistryProxy
from tests.support.squashfs_tree import read_squashfs, summary

LAYERS = [L.layer(L.dir("etc"), L.file("etc/motd", b"hello\n"), L.file("bin/tool", b"v1", 0o755)),
          L.layer(L.whiteout("etc/motd"), L.file("srv/data", b"x" * 70000))]
MOVED = [L.layer(L.file("bin/tool", b"v2", 0o755))]


@pytest.fixture
def proxy(registry):
    proxy = RegistryProxy(registry.url)
    yield proxy
    proxy.stop()


def builder_for(tmp_path: Path, url: str, **converter) -> Builder:
    config = parse_config({
        "CacheDirectory": str(tmp_path / "cache"), "ExpandDirectory": str(tmp_path / "expand"),
        "Locations": {"testreg": {"url": url}},
        "ConverterOptions": converter,
        "Platforms": {name: {"accesstype": "local",
                             "local": {"imageDir": str(tmp_path / "images" / name)}}
                      for name in ("alpha", "beta", "gamma")},
    })
    return Builder(config, WorkerPaths(config.cache_dir, config.expand_dir))


def build(builder: Builder, reference: str, system: str):
    return builder.build(BuildJob(job_id=f"job-{system}", system=system, reference=reference),
                         lambda progress: None)


def blob_requests(proxy: RegistryProxy) -> int:
    return sum(1 for request in proxy.requests if "/blobs/" in request.path)


def conversions(caplog) -> int:
    return sum(1 for record in caplog.records
               if record.name == "imagegw.pipeline.squashfs"
               and record.getMessage().startswith("built "))


def test_pull_for_a_second_system_publishes_the_stored_conversion(
        tmp_path, registry, proxy, caplog):
    caplog.set_level(logging.INFO, logger="imagegw.pipeline.squashfs")
    push_image(registry.url, "cc/app", "1", LAYERS)
    builder = builder_for(tmp_path, proxy.url)
    first = build(builder, "testreg/cc/app:1", "alpha")
    requests_after_first = blob_requests(proxy)
    second = build(builder, "testreg/cc/app:1", "beta")
    assert conversions(caplog) == 1
    assert blob_requests(proxy) == requests_after_first
    assert second.image_id == first.image_id and second.size_bytes == first.size_bytes
    alpha = tmp_path / "images" / "alpha" / first.image_file
    beta = tmp_path / "images" / "beta" / second.image_file
    assert summary(read_squashfs(beta)) == summary(read_squashfs(alpha))
    assert (tmp_path / "images" / "beta" / second.meta_file).read_text().startswith("FORMAT:")


def test_other_converter_options_convert_again(tmp_path, registry, proxy, caplog):
    caplog.set_level(logging.INFO, logger="imagegw.pipeline.squashfs")
    push_image(registry.url, "cc/opts", "1", LAYERS)
    build(builder_for(tmp_path, proxy.url), "testreg/cc/opts:1", "alpha")
    result = build(builder_for(tmp_path, proxy.url, compressor="zstd", level=3),
                   "testreg/cc/opts:1", "beta")
    assert conversions(caplog) == 2
    assert len(list((tmp_path / "cache" / "conversions").iterdir())) == 2
    tree = read_squashfs(tmp_path / "images" / "beta" / result.image_file)
    assert "etc/motd" not in tree and tree["srv/data"].size == 70000


def test_tag_moved_back_publishes_the_stored_conversion(
        tmp_path, registry, proxy, caplog):
    caplog.set_level(logging.INFO, logger="imagegw.pipeline.squashfs")
    old = push_image(registry.url, "cc/moving", "stable", LAYERS)
    builder = builder_for(tmp_path, proxy.url)
    first = build(builder, "testreg/cc/moving:stable", "gamma")
    push_image(registry.url, "cc/moving", "stable", MOVED)
    build(builder, "testreg/cc/moving:stable", "gamma")
    # The old image expired from the system meanwhile; then the tag moves back.
    publisher_for(builder.config.platform("gamma")).remove(first.image_file, first.meta_file)
    push_image(registry.url, "cc/moving", "stable", LAYERS)
    requests_before = blob_requests(proxy)
    back = build(builder, "testreg/cc/moving:stable", "gamma")
    assert back.manifest_digest == old.manifest_digest and back.image_id == first.image_id
    assert conversions(caplog) == 2
    assert blob_requests(proxy) == requests_before
    tree = read_squashfs(tmp_path / "images" / "gamma" / back.image_file)
    assert tree["bin/tool"].size == 2
