"""Issue 2 end to end: registry image -> flattened squashfs + meta file, published atomically.

Images are built by the tests, pushed over HTTP to a real docker-registry, pulled
through the worker's Builder and compared with the expected flattened tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagegw.cache.layout import WorkerPaths
from imagegw.domain.config import parse_config
from imagegw.domain.errors import ContentRejected, DigestMismatch, PlatformNotFound, RegistryAuthFailed
from imagegw.domain.model import BuildJob, Progress, RegistryCredentials, Stage
from imagegw.pipeline.meta import parse_meta
from imagegw.worker.build import Builder
from tests.support import layers as L
from tests.support.images import default_config, push_image, push_index
from tests.support.proxy import CorruptBody, RegistryProxy
from tests.support.squashfs_tree import read_squashfs, sha256

CONFIG = {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello world"],
          "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo \"$GREETING\""],
          "WorkingDir": "/srv", "User": "1000:1000", "Labels": {"org.example.team": "hpc"}}


def image_config(layers: list[bytes], runtime: dict, platform: dict | None = None) -> dict:
    """A full image config (rootfs, history) around the runtime `config` section."""
    config = default_config(layers, platform)
    config["config"] = runtime
    return config


def make_config(tmp_path: Path, url: str, **platform_extra) -> dict:
    return {
        "CacheDirectory": str(tmp_path / "cache"), "ExpandDirectory": str(tmp_path / "expand"),
        "Locations": {"testreg": {"url": url}},
        "Platforms": {
            "cluster": {"accesstype": "local", "local": {"imageDir": str(tmp_path / "images")},
                        **platform_extra},
            "armcluster": {"accesstype": "local", "architecture": "arm64",
                           "local": {"imageDir": str(tmp_path / "arm-images")}},
            "other": {"accesstype": "local", "local": {"imageDir": str(tmp_path / "other")}},
        },
    }


def builder_for(tmp_path: Path, url: str, **extra) -> Builder:
    config = parse_config(make_config(tmp_path, url, **extra))
    return Builder(config, WorkerPaths(config.cache_dir, config.expand_dir))


def run(builder: Builder, reference: str, system: str = "cluster", **job):
    events: list[Progress] = []
    result = builder.build(BuildJob(job_id=f"job-{len(reference)}-{system}", system=system,
                                    reference=reference, **job), events.append)
    return result, events


# Layers covering every flattening case of the OCI image spec.
BASE = L.layer(
    L.dir("etc"), L.file("etc/os-release", b"ID=test\n"),
    L.dir("usr"), L.dir("usr/bin"), L.file("usr/bin/tool", b"#!/bin/sh\necho v1\n", 0o755),
    L.file("usr/bin/su", b"setuid", 0o4755),
    L.dir("opt"), L.dir("opt/app"), L.file("opt/app/old.txt", b"old"),
    L.dir("var"), L.dir("var/cache"), L.file("var/cache/a", b"a"), L.file("var/cache/b", b"b"),
    L.file("data", b"was a file"), L.dir("tree"), L.file("tree/leaf", b"leaf"),
    L.file("shared", b"shared bytes"), L.symlink("lib", "usr/lib"),
    L.file("./dotted", b"dot-prefixed"),
)
MIDDLE = L.layer(
    L.whiteout("etc/os-release"),  # whiteout of a file
    L.opaque("opt/app"), L.file("opt/app/new.txt", b"new"),  # opaque dir, same-layer child
    L.whiteout("var/cache"),  # whiteout of a directory
    L.dir("data"), L.file("data/inside", b"now a dir"),  # directory replaces a file
    L.file("tree", b"now a file"),  # file replaces a directory
    L.hardlink("linked", "shared"),  # hardlink to a file of an earlier layer
    L.file("usr/bin/tool", b"#!/bin/sh\necho v2\n", 0o755),
    L.file("na\u00efve-\u00fcnicode.txt", b"pax"),
    L.file("deep/" + "d" * 120 + "/file", b"long path"),
)
TOP = L.layer(
    L.file("shared", b"replaced later"),  # the hardlink keeps the old bytes
    L.symlink("lib", "usr/lib64"),  # symlink replaced
    compression="zstd",
)


def expected_tree() -> dict[str, tuple[str, str]]:
    f = lambda data: ("file", sha256(data))  # noqa: E731
    d = ("dir", "")
    return {
        "etc": d, "usr": d, "usr/bin": d, "usr/bin/tool": f(b"#!/bin/sh\necho v2\n"),
        "usr/bin/su": f(b"setuid"), "opt": d, "opt/app": d, "opt/app/new.txt": f(b"new"),
        "var": d, "data": d, "data/inside": f(b"now a dir"), "tree": f(b"now a file"),
        "shared": f(b"replaced later"), "linked": f(b"shared bytes"),
        "lib": ("symlink", "usr/lib64"), "dotted": f(b"dot-prefixed"),
        "na\u00efve-\u00fcnicode.txt": f(b"pax"), "deep": d, "deep/" + "d" * 120: d,
        "deep/" + "d" * 120 + "/file": f(b"long path"),
    }


@pytest.fixture(scope="module")
def pushed(registry):
    return push_image(registry.url, "cases/flatten", "1", [BASE, MIDDLE, TOP],
                      image_config([BASE, MIDDLE, TOP], CONFIG))


def test_image_is_flattened_exactly_and_published_with_meta(tmp_path, registry, pushed):
    builder = builder_for(tmp_path, registry.url)
    result, events = run(builder, "testreg/cases/flatten:1")
    assert result.image_id == pushed.config_digest.removeprefix("sha256:")
    assert result.manifest_digest == pushed.manifest_digest
    image = tmp_path / "images" / f"{result.image_id}.squashfs"
    meta = tmp_path / "images" / f"{result.image_id}.meta"
    assert image.stat().st_size == result.size_bytes
    tree = read_squashfs(image)
    got = {path: (node.type, node.link or node.sha256) for path, node in tree.items()}
    assert got == expected_tree()
    assert all(node.uid == 0 and node.gid == 0 for node in tree.values())
    assert tree["usr/bin/su"].mode & 0o6000 == 0, "setuid must be cleared"
    assert tree["usr/bin/tool"].mode & 0o777 == 0o755
    fields = parse_meta(meta.read_text())
    assert fields["FORMAT"] == ["squashfs"]
    assert fields["ENTRY"] == ["['/bin/sh', '-c']"]
    assert fields["CMD"] == ["['echo \"$GREETING\"']"]
    assert fields["WORKDIR"] == ["/srv"]
    assert fields["ENV"] == CONFIG["Env"]
    assert result.metadata.user == "1000:1000"
    assert result.metadata.labels == {"org.example.team": "hpc"}
    stages = [e.stage for e in events]
    for stage in (Stage.RESOLVING, Stage.DOWNLOADING, Stage.CONVERTING, Stage.PUBLISHING):
        assert stage in stages
    assert stages.index(Stage.DOWNLOADING) < stages.index(Stage.CONVERTING)
    downloads = [e for e in events if e.stage == Stage.DOWNLOADING and e.bytes_total]
    assert downloads[-1].bytes_total == sum(len(b) for b in (BASE, MIDDLE, TOP))
    assert not list((tmp_path / "images").glob(".*")), "no temporary files left"
    assert not [p for p in (tmp_path / "expand").iterdir()], "scratch space cleaned"


def test_rerun_downloads_nothing_and_same_content_gets_same_id(tmp_path, registry, pushed):
    proxy = RegistryProxy(registry.url)
    try:
        builder = builder_for(tmp_path, proxy.url)
        first, _ = run(builder, "testreg/cases/flatten:1")
        assert proxy.blob_gets() == 4  # three layers and the config
        proxy.clear()
        again, _ = run(builder, "testreg/cases/flatten:1", system="other")
        assert proxy.blob_gets() == 0, "layers and config come from the cache"
        assert again.image_id == first.image_id
        assert (tmp_path / "other" / f"{first.image_id}.squashfs").exists()
        reused, _ = run(builder, "testreg/cases/flatten:1", system="other")
        assert reused.reused
    finally:
        proxy.stop()


def test_multi_arch_index_picks_the_systems_platform(tmp_path, registry):
    amd = push_image(registry.url, "cases/multi", None, [L.layer(L.file("arch", b"amd64"))],
                     platform={"os": "linux", "architecture": "amd64"})
    arm = push_image(registry.url, "cases/multi", None, [L.layer(L.file("arch", b"arm64"))],
                     platform={"os": "linux", "architecture": "arm64", "variant": "v8"})
    push_index(registry.url, "cases/multi", "1", [amd, arm])
    builder = builder_for(tmp_path, registry.url)
    amd_result, _ = run(builder, "testreg/cases/multi:1")
    arm_result, _ = run(builder, "testreg/cases/multi:1", system="armcluster")
    assert amd_result.image_id == amd.config_digest[7:]
    assert arm_result.image_id == arm.config_digest[7:]
    arm_tree = read_squashfs(tmp_path / "arm-images" / f"{arm_result.image_id}.squashfs")
    assert arm_tree["arch"].sha256 == sha256(b"arm64")
    ppc = builder_for(tmp_path / "ppc", registry.url, architecture="ppc64le")
    with pytest.raises(PlatformNotFound, match="arm64"):
        run(ppc, "testreg/cases/multi:1")


@pytest.mark.parametrize("fixture", ["basic_registry", "token_registry"])
def test_private_registries_need_the_right_credentials(tmp_path, request, fixture):
    server = request.getfixturevalue(fixture)
    blob = L.layer(L.file("secret", b"only for alice"))
    pushed = push_image(server.url, "private/app", "1", [blob], auth=("alice", "wonderland"))
    builder = builder_for(tmp_path, server.url)
    with pytest.raises(RegistryAuthFailed):
        run(builder, "testreg/private/app:1")
    with pytest.raises(RegistryAuthFailed) as info:
        run(builder, "testreg/private/app:1",
            credentials=RegistryCredentials("alice", "not-the-password"))
    assert "not-the-password" not in str(info.value)
    result, _ = run(builder, "testreg/private/app:1",
                    credentials=RegistryCredentials("alice", "wonderland"))
    assert result.image_id == pushed.config_digest[7:]
    assert not list((tmp_path / "images").glob(".*"))


def test_redirected_blobs_are_fetched_without_leaking_authorization(tmp_path, token_registry):
    push_image(token_registry.url, "redirect/app", "1", [L.layer(L.file("x", b"redirected"))],
               auth=("alice", "wonderland"))
    proxy = RegistryProxy(token_registry.url, redirect_blobs=True)
    try:
        builder = builder_for(tmp_path, proxy.url)
        result, _ = run(builder, "testreg/redirect/app:1",
                        credentials=RegistryCredentials("alice", "wonderland"))
        tree = read_squashfs(tmp_path / "images" / f"{result.image_id}.squashfs")
        assert tree["x"].sha256 == sha256(b"redirected")
        assert proxy.blob_store is not None
        assert proxy.blob_store.requests, "blobs were served by the redirect target"
        assert not any("authorization" in {k.lower() for k in r.headers}
                       for r in proxy.blob_store.requests)
    finally:
        proxy.stop()


def test_corrupted_blob_fails_and_publishes_nothing(tmp_path, registry):
    push_image(registry.url, "cases/corrupt", "1", [L.layer(L.file("f", b"x" * 5000))])
    proxy = RegistryProxy(registry.url)
    proxy.faults.append(CorruptBody(times=None))
    try:
        builder = builder_for(tmp_path, proxy.url)
        with pytest.raises(DigestMismatch):
            run(builder, "testreg/cases/corrupt:1")
    finally:
        proxy.stop()
    images = tmp_path / "images"
    assert not images.exists() or not os.listdir(images)
    assert not [p for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()]
    assert not list((tmp_path / "expand").iterdir())


def test_a_second_conversion_of_the_layers_uses_their_kept_indexes(tmp_path, registry, pushed,
                                                                     caplog):
    caplog.set_level("INFO", logger="imagegw.pipeline.squashfs")
    first, _ = run(builder_for(tmp_path, registry.url), "testreg/cases/flatten:1")
    # The first conversion reads each layer once, newest first, and keeps their indexes.
    builds = [r.getMessage() for r in caplog.records if "built an image" in r.getMessage()]
    assert len(builds) == 1 and "one_pass=" in builds[0]
    blobs = sorted((tmp_path / "cache").rglob("*.index-v*"))
    assert len(blobs) == 3
    # Other converter options: a new conversion, which merges the kept indexes first.
    caplog.clear()
    config = make_config(tmp_path, registry.url)
    config["ConverterOptions"] = {"level": 1}
    parsed = parse_config(config)
    builder = Builder(parsed, WorkerPaths(parsed.cache_dir, parsed.expand_dir))
    again, _ = run(builder, "testreg/cases/flatten:1", system="other")
    builds = [r.getMessage() for r in caplog.records if "built an image" in r.getMessage()]
    assert len(builds) == 1 and "one_pass=False" in builds[0]
    tree = read_squashfs(tmp_path / "other" / f"{again.image_id}.squashfs")
    assert {path: (node.type, node.link or node.sha256) for path, node in tree.items()} == \
        expected_tree()


def test_a_layer_read_to_its_end_keeps_its_index_when_an_older_layer_is_refused(
        tmp_path, registry):
    refused = L.layer(L.file("ok", b"fine"), L.raw_member("a/../../escape", data=b"x"))
    newest = L.layer(L.file("app/run", b"#!/bin/sh\n", 0o755))
    pushed = push_image(registry.url, "cases/refused-below", "1", [refused, newest])
    with pytest.raises(ContentRejected, match="escape"):
        run(builder_for(tmp_path, registry.url), "testreg/cases/refused-below:1")
    kept = {p.name.split(".", 1)[0] for p in (tmp_path / "cache").rglob("*.index-v*")}
    # The newest layer was read first and whole: its index is kept for the next pull;
    # the refused layer has none.
    assert kept == {pushed.layer_digests[1].split(":", 1)[1]}
    images = tmp_path / "images"
    assert not images.exists() or not os.listdir(images)
