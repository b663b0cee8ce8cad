"""Issue 9: gateway A converts an image and shares the squashfs as an OCI artifact (pushed
with oras); gateway B, with its own data directory, finds it and skips the conversion."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import replace

import pytest
import urllib3

from imagegw.artifacts import SQUASHFS_MEDIA_TYPE, ConversionKey
from imagegw.domain.config import ConverterOptions, parse_config
from imagegw.domain.errors import ConfigError
from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import image_pb2
from tests.support import layers as L
from tests.support.images import default_config, push_image
from tests.support.proxy import RegistryProxy
from tests.support.services import embedded_config, start_service
from tests.support.squashfs_tree import read_squashfs

SYSTEM = "default"
REPOSITORY = "imagegw/conversions"


@pytest.fixture(scope="module")
def proxy(registry):
    proxy = RegistryProxy(registry.url)
    yield proxy
    proxy.stop()


def open_config(workdir, **kwargs):
    """embedded_config, with pulls that carry no MUNGE credential allowed."""
    config = embedded_config(workdir, **kwargs)
    config["Platforms"][SYSTEM]["allowAnonymousPull"] = True
    return config


def gateway_config(workdir, proxy, registry, *, push=True, converter=None):
    """Source images through the counting proxy; the shared registry directly."""
    config = open_config(workdir, registry_url=proxy.url)
    config["Locations"]["shared"] = {"remotetype": "dockerv2", "url": registry.url}
    config["SharedConversions"] = {"registry": "shared", "repository": REPOSITORY,
                                   "push": push, "pull": True}
    if converter:
        config["ConverterOptions"] = converter
    return config


def pull(service, reference):
    request = pb.PullImageRequest(system=SYSTEM, reference=reference)
    return list(service.stub().PullImage(request, timeout=120))[-1].image


def layer_gets(proxy, pushed):
    return sum(proxy.count("GET", rf"/blobs/{digest}$") for digest in pushed.layer_digests)


def shared_manifest(registry, tag):
    reply = urllib3.request("GET", f"{registry.url}/v2/{REPOSITORY}/manifests/{tag}", timeout=10,
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert reply.status == 200, reply.data
    return json.loads(reply.data)


def test_second_gateway_uses_the_shared_conversion_without_downloading_layers(
        tmp_path, registry, proxy):
    layers = [L.layer(L.file("bin/app", os.urandom(50_000), 0o755)),
              L.layer(L.file("etc/conf", b"shared=yes"), L.symlink("etc/link", "conf"))]
    config = default_config(layers)
    config["config"] = {"Env": ["PATH=/bin"], "Cmd": ["/bin/app"], "WorkingDir": "/etc"}
    pushed = push_image(registry.url, "share/app", "1", layers, config)

    a = start_service("serve", gateway_config(tmp_path / "a", proxy, registry), tmp_path / "a")
    try:
        proxy.clear()
        first = pull(a, "testreg/share/app:1")
        assert first.state == image_pb2.IMAGE_STATE_READY, first.failure.message
        assert layer_gets(proxy, pushed) == 2, "A converts: it downloads both layers"
    finally:
        a.stop()
    # The worker compresses with libdeflate (scripts/setup builds its shim), and says so.
    key = ConversionKey(pushed.manifest_digest, "squashfs", ConverterOptions(gzip_engine="libdeflate"))
    manifest = shared_manifest(registry, key.tag)
    annotations = manifest["annotations"]
    assert annotations["io.imagegw.source.manifest-digest"] == pushed.manifest_digest
    assert annotations["io.imagegw.image.id"] == first.id
    assert annotations["io.imagegw.conversion.format"] == "squashfs"
    options = json.loads(annotations["io.imagegw.conversion.options"])
    assert (options["compressor"], options["gzipEngine"]) == ("gzip", "libdeflate")
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        SQUASHFS_MEDIA_TYPE, "application/vnd.imagegw.meta.v1+text"]
    assert [layer["annotations"]["org.opencontainers.image.title"] for layer in manifest["layers"]
            ] == [f"{first.id}.squashfs", f"{first.id}.meta"]

    b = start_service("serve", gateway_config(tmp_path / "b", proxy, registry, push=False),
                      tmp_path / "b")
    try:
        proxy.clear()
        second = pull(b, "testreg/share/app:1")
    finally:
        b.stop()

    assert second.state == image_pb2.IMAGE_STATE_READY, second.failure.message
    assert layer_gets(proxy, pushed) == 0, "B downloads no layer"
    assert second.id == first.id and second.manifest_digest == first.manifest_digest
    assert list(second.metadata.cmd) == ["/bin/app"] and second.metadata.workdir == "/etc"
    image_a = tmp_path / "a" / "images" / SYSTEM / f"{first.id}.squashfs"
    image_b = tmp_path / "b" / "images" / SYSTEM / f"{second.id}.squashfs"
    assert image_b.read_bytes() == image_a.read_bytes()
    assert read_squashfs(image_b)["etc/conf"].size == len(b"shared=yes")
    assert (image_b.with_suffix(".meta").read_text()
            == image_a.with_suffix(".meta").read_text())


def test_gateway_with_other_converter_options_converts_for_itself(tmp_path, registry, proxy):
    layers = [L.layer(L.file("data", os.urandom(20_000)))]
    pushed = push_image(registry.url, "share/options", "1", layers)
    a = start_service("serve", gateway_config(tmp_path / "a", proxy, registry), tmp_path / "a")
    try:
        assert pull(a, "testreg/share/options:1").state == image_pb2.IMAGE_STATE_READY
    finally:
        a.stop()

    c = start_service("serve", gateway_config(tmp_path / "c", proxy, registry, push=False,
                                              converter={"blockSize": 65536}), tmp_path / "c")
    try:
        proxy.clear()
        image = pull(c, "testreg/share/options:1")
    finally:
        c.stop()

    assert image.state == image_pb2.IMAGE_STATE_READY, image.failure.message
    assert layer_gets(proxy, pushed) == 1, "different block size: a different conversion"


def test_unreachable_shared_registry_does_not_fail_the_pull(tmp_path, registry, proxy):
    layers = [L.layer(L.file("f", b"offline share"))]
    push_image(registry.url, "share/offline", "1", layers)
    config = gateway_config(tmp_path, proxy, registry)
    config["Locations"]["shared"]["url"] = "http://127.0.0.1:9"  # discard port: refused
    config["Limits"] = {"httpRetries": 1, "httpTimeout": 5}
    service = start_service("serve", config, tmp_path)
    try:
        image = pull(service, "testreg/share/offline:1")
    finally:
        service.stop()
    assert image.state == image_pb2.IMAGE_STATE_READY, image.failure.message
    assert "shared conversion" in (tmp_path / "serve.log").read_text()


def test_shared_conversions_must_name_a_configured_location():
    base = {"Platforms": {"x": {"accesstype": "local", "local": {"imageDir": "/tmp/x"}}}}
    with pytest.raises(ConfigError, match="SharedConversions.registry: 'elsewhere' is not a key"):
        parse_config({**base, "SharedConversions": {"registry": "elsewhere"}})
    with pytest.raises(ConfigError, match="SharedConversions.repository"):
        parse_config({**base, "Locations": {"s": {"url": "http://127.0.0.1:1"}},
                      "SharedConversions": {"registry": "s", "repository": "Bad Name"}})
    config = parse_config({**base, "Locations": {"s": {"url": "http://127.0.0.1:1"}},
                           "SharedConversions": {"registry": "s", "push": False}})
    assert config.shared_conversions is not None
    assert (config.shared_conversions.repository, config.shared_conversions.push,
            config.shared_conversions.pull) == (REPOSITORY, False, True)


def test_conversion_key_ignores_thread_count_but_not_output_settings():
    digest = "sha256:" + "a" * 64
    zlib = ConverterOptions(gzip_engine="zlib")
    base = ConversionKey(digest, "squashfs", zlib)
    assert base.tag == ConversionKey(digest, "squashfs", replace(zlib, jobs=8)).tag
    assert base.tag == ConversionKey(digest, "squashfs", replace(zlib, queue_backlog=500)).tag
    assert base.tag != ConversionKey(digest, "squashfs", replace(zlib, compressor="xz")).tag
    assert base.tag != ConversionKey("sha256:" + "b" * 64, "squashfs", zlib).tag
    assert len(base.tag) <= 128
    # libdeflate writes other bytes than zlib: another key. A zlib image keeps the key it had
    # before the engine could be chosen, and the engine means nothing to other compressors.
    assert base.tag != ConversionKey(digest, "squashfs", replace(zlib, gzip_engine="libdeflate")).tag
    assert "gzipEngine" not in base.options_text()
    zstd = ConversionKey(digest, "squashfs", ConverterOptions(compressor="zstd", gzip_engine="zlib"))
    assert zstd.tag == ConversionKey(digest, "squashfs", replace(zstd.options, gzip_engine="auto")).tag
    with pytest.raises(ValueError, match="resolved"):
        ConversionKey(digest, "squashfs", ConverterOptions(gzip_engine="auto")).options_text()


def test_shared_conversions_authenticate_with_the_configured_auth_file(
        tmp_path, registry, token_registry):
    user, password = next(iter(token_registry.users.items()))
    pushed = push_image(registry.url, "share/private", "1",
                        [L.layer(L.file("secret", b"shared behind a token"))])
    auth_file = tmp_path / "shared-auth.json"
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    auth_file.write_text(json.dumps({"auths": {token_registry.host: {"auth": token}}}))

    def config(workdir, *, push):
        config = open_config(workdir, registry_url=registry.url)
        config["Locations"]["shared"] = {"url": token_registry.url}
        config["SharedConversions"] = {"registry": "shared", "push": push,
                                       "authFile": str(auth_file)}
        return config

    images = []
    for name, push in (("a", True), ("b", False)):
        service = start_service("serve", config(tmp_path / name, push=push), tmp_path / name)
        try:
            images.append(pull(service, "testreg/share/private:1"))
        finally:
            service.stop()

    assert [image.state for image in images] == [image_pb2.IMAGE_STATE_READY] * 2, \
        [image.failure.message for image in images]
    assert images[0].id == images[1].id == pushed.config_digest[7:]
    assert "using shared conversion" in (tmp_path / "b" / "serve.log").read_text()


def test_runtime_images_are_shared_only_with_gateways_publishing_for_the_same_runtimes(
        tmp_path, registry, proxy):
    layers = [L.layer(L.file("bin/tool", os.urandom(30_000), 0o755))]
    config = default_config(layers)
    config["config"] = {"Env": ["PATH=/bin"], "Cmd": ["/bin/tool"], "WorkingDir": "/w"}
    pushed = push_image(registry.url, "share/runtimes", "1", layers, config)

    def gateway(name, runtimes=None, push=True):
        settings = gateway_config(tmp_path / name, proxy, registry, push=push)
        if runtimes:
            settings["Platforms"][SYSTEM]["runtimes"] = runtimes
        return start_service("serve", settings, tmp_path / name)

    def pulled(name, runtimes=None, push=True):
        service = gateway(name, runtimes, push)
        try:
            proxy.clear()
            image = pull(service, "testreg/share/runtimes:1")
            assert image.state == image_pb2.IMAGE_STATE_READY, image.failure.message
            return image, layer_gets(proxy, pushed), tmp_path / name / "images" / SYSTEM
        finally:
            service.stop()

    runtimes = ["shifter", "enroot", "apptainer"]
    first, gets_a, dir_a = pulled("a", runtimes)
    again, gets_b, dir_b = pulled("b", runtimes, push=False)
    plain, gets_c, dir_c = pulled("c", push=False)
    assert (gets_a, gets_b, gets_c) == (1, 0, 1), "B shares A's conversion; C converts its own"
    for name in (f"{first.id}.squashfs", f"{first.id}.sif"):
        assert (dir_b / name).read_bytes() == (dir_a / name).read_bytes()
    assert "etc/rc" in read_squashfs(dir_b / f"{again.id}.squashfs")
    assert "etc/rc" not in read_squashfs(dir_c / f"{plain.id}.squashfs")
