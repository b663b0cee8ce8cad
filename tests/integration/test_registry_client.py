"""The registry client and image resolution against a real docker-registry."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import zstandard

from imagegw.domain.config import Limits, Platform
from imagegw.domain.errors import (
    ContentRejected,
    DigestMismatch,
    ImageNotFound,
    PlatformNotFound,
    RegistryAuthFailed,
    RegistryProtocolError,
    RegistryUnavailable,
)
from imagegw.domain.model import RegistryCredentials
from imagegw.domain.reference import ImageReference
from imagegw.registry import RegistryClient, resolve_image
from imagegw.registry.manifest import DOCKER_MANIFEST_LIST, OCI_INDEX
from tests.support.images import index_entry, push_image, push_index
from tests.support.proxy import (
    CorruptBody,
    ExtraBytes,
    RateLimited,
    RegistryProxy,
    ResetMidBody,
    ServerErrors,
    Trickle,
)

ALICE = RegistryCredentials("alice", "wonderland")
FAST = Limits(http_timeout=10.0, http_retries=4)


def tar_layer(files: dict[str, bytes], compression: str = "gzip") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    if compression == "gzip":
        return gzip.compress(raw, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(raw)
    return raw


def system(architecture: str = "amd64", variant: str = "") -> Platform:
    return Platform(name="test", access_type="local", image_dir="/unused",
                    architecture=architecture, variant=variant)


def reference(server_url: str, repository: str, tag: str) -> ImageReference:
    host = server_url.split("://", 1)[1]
    return ImageReference(location=host, registry_url=server_url, repository=repository,
                          tag=tag, digest=None)


def fetch(client: RegistryClient, digest: str, size: int) -> bytes:
    out = io.BytesIO()
    client.fetch_blob(digest, size, out)
    return out.getvalue()


@pytest.fixture(scope="module")
def big_image(registry):
    """An image with one 3 MiB layer of random bytes (several 1 MiB chunks)."""
    layer = tar_layer({"data.bin": os.urandom(3 * 1024 * 1024)}, compression="none")
    return push_image(registry.url, "test/big", "1", [layer]), layer


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_anonymous_pull_resolves_and_fetches_layers(registry, media):
    layers = [tar_layer({"etc/hello": b"hi\n"}), tar_layer({"bin/tool": b"#!/bin/sh\n"})]
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["A=1"], "Entrypoint": ["/bin/tool"], "WorkingDir": "/w"},
              "rootfs": {"type": "layers", "diff_ids": [
                  "sha256:" + "0" * 64, "sha256:" + "1" * 64]}}
    pushed = push_image(registry.url, f"test/anon-{media}", "v1", layers, config, media=media)
    with RegistryClient(registry.url, f"test/anon-{media}", limits=FAST) as client:
        image = resolve_image(client, reference(registry.url, f"test/anon-{media}", "v1"),
                              system(), FAST)
        assert image.manifest_digest == pushed.manifest_digest
        assert image.index_digest == ""
        assert image.config_digest == pushed.config_digest
        assert image.image_id == pushed.config_digest.removeprefix("sha256:")
        assert image.metadata.env == ("A=1",)
        assert image.metadata.entrypoint == ("/bin/tool",)
        assert image.metadata.workdir == "/w"
        assert [layer.digest for layer in image.layers] == list(pushed.layer_digests)
        for layer, data in zip(image.layers, layers, strict=True):
            assert fetch(client, layer.digest, layer.size) == data


def test_zstd_and_uncompressed_layers_keep_their_compression(registry):
    layers = [tar_layer({"a": b"1"}, "zstd"), tar_layer({"b": b"2"}, "none")]
    push_image(registry.url, "test/mixed", "v1", layers)
    with RegistryClient(registry.url, "test/mixed", limits=FAST) as client:
        image = resolve_image(client, reference(registry.url, "test/mixed", "v1"), system())
    assert [layer.compression for layer in image.layers] == ["zstd", "none"]


def test_get_manifest_by_digest_and_head_agree(registry):
    pushed = push_image(registry.url, "test/pinned", "v1", [tar_layer({"x": b"x"})])
    with RegistryClient(registry.url, "test/pinned", limits=FAST) as client:
        body, media_type, digest = client.get_manifest(pushed.manifest_digest)
        assert body == pushed.manifest
        assert digest == pushed.manifest_digest
        assert media_type == pushed.media_type
        assert client.head_manifest("v1") == pushed.manifest_digest


@pytest.mark.parametrize("media,index_type", [("oci", OCI_INDEX), ("docker", DOCKER_MANIFEST_LIST)])
def test_multi_arch_index_picks_each_architecture(registry, media, index_type):
    repo = f"test/multi-{media}"
    amd64 = push_image(registry.url, repo, None, [tar_layer({"arch": b"amd64"})], media=media,
                       platform={"os": "linux", "architecture": "amd64"})
    arm64 = push_image(registry.url, repo, None, [tar_layer({"arch": b"arm64"})], media=media,
                       platform={"os": "linux", "architecture": "arm64", "variant": "v8"})
    attestation = index_entry(amd64, {"os": "unknown", "architecture": "unknown"},
                              {"vnd.docker.reference.type": "attestation-manifest"})
    pushed = push_index(registry.url, repo, "multi", [amd64, arm64], media=media,
                        extra_entries=[attestation])
    ref = reference(registry.url, repo, "multi")
    with RegistryClient(registry.url, repo, limits=FAST) as client:
        assert client.get_manifest("multi")[1] == index_type
        on_amd64 = resolve_image(client, ref, system("amd64"))
        on_arm64 = resolve_image(client, ref, system("arm64"))
        assert on_amd64.manifest_digest == amd64.manifest_digest
        assert on_arm64.manifest_digest == arm64.manifest_digest
        assert on_amd64.index_digest == on_arm64.index_digest == pushed.digest
        assert on_arm64.config["architecture"] == "arm64"
        with pytest.raises(PlatformNotFound) as caught:
            resolve_image(client, ref, system("s390x"))
    assert "linux/amd64" in str(caught.value) and "linux/arm64/v8" in str(caught.value)


def test_missing_tag_is_image_not_found_naming_the_image(registry):
    push_image(registry.url, "test/exists", "v1", [tar_layer({"x": b"x"})])
    with RegistryClient(registry.url, "test/exists", limits=FAST) as client, \
            pytest.raises(ImageNotFound) as caught:
        client.get_manifest("no-such-tag")
    assert f"registry {registry.host} has no image test/exists:no-such-tag" in str(caught.value)


def test_missing_repository_is_image_not_found(registry):
    with RegistryClient(registry.url, "test/never-pushed", limits=FAST) as client, \
            pytest.raises(ImageNotFound):
        client.get_manifest("latest")


def test_manifest_over_the_size_cap_is_rejected(registry):
    push_image(registry.url, "test/capped", "v1", [tar_layer({"x": b"x"})])
    with RegistryClient(registry.url, "test/capped", limits=Limits(max_manifest_bytes=100)) as c, \
            pytest.raises(ContentRejected, match="over 100 bytes"):
        c.get_manifest("v1")


def test_manifest_asked_by_digest_must_hash_to_it(registry):
    pushed = push_image(registry.url, "test/digest-check", "v1", [tar_layer({"x": b"x"})])
    proxy = RegistryProxy(registry.url)
    try:
        proxy.faults.append(CorruptBody(r"/manifests/sha256:", times=None))
        with RegistryClient(proxy.url, "test/digest-check", limits=FAST) as client, \
                pytest.raises(DigestMismatch):
            client.get_manifest(pushed.manifest_digest)
    finally:
        proxy.stop()


# -- authentication -----------------------------------------------------------


def test_basic_auth_with_right_credentials_pulls(basic_registry):
    pushed = push_image(basic_registry.url, "team/private", "v1", [tar_layer({"x": b"x"})],
                        auth=("alice", "wonderland"))
    with RegistryClient(basic_registry.url, "team/private", credentials=ALICE,
                        limits=FAST) as client:
        client.check_access()
        image = resolve_image(client, reference(basic_registry.url, "team/private", "v1"),
                              system())
        assert image.manifest_digest == pushed.manifest_digest
        layer = image.layers[0]
        assert fetch(client, layer.digest, layer.size)


@pytest.mark.parametrize("server", ["basic_registry", "token_registry"])
def test_threads_sharing_a_client_all_authenticate(request, server):
    target = request.getfixturevalue(server)
    layers = [tar_layer({f"f{n}": bytes([n]) * 1000}) for n in range(6)]
    pushed = push_image(target.url, "team/shared", "v1", layers, auth=("alice", "wonderland"))
    with RegistryClient(target.url, "team/shared", credentials=ALICE, limits=FAST) as client, \
            ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda n: fetch(client, pushed.layer_digests[n], len(layers[n])),
                                range(6)))
    assert results == layers


def test_basic_auth_with_wrong_password_fails_without_revealing_it(basic_registry):
    wrong = RegistryCredentials("alice", "not-the-password")
    with RegistryClient(basic_registry.url, "team/private", credentials=wrong,
                        limits=FAST) as client, pytest.raises(RegistryAuthFailed) as caught:
        client.get_manifest("v1")
    message = str(caught.value)
    assert basic_registry.host in message and "team/private" in message and "alice" in message
    assert "not-the-password" not in message


def test_basic_auth_without_credentials_asks_to_log_in(basic_registry):
    with RegistryClient(basic_registry.url, "team/private", limits=FAST) as client, \
            pytest.raises(RegistryAuthFailed, match="shifterimg login"):
        client.check_access()


def test_token_auth_with_right_credentials_pulls(token_registry):
    pushed = push_image(token_registry.url, "team/secret", "v1", [tar_layer({"x": b"x"})],
                        auth=("alice", "wonderland"))
    with RegistryClient(token_registry.url, "team/secret", credentials=ALICE,
                        limits=FAST) as client:
        client.check_access()
        image = resolve_image(client, reference(token_registry.url, "team/secret", "v1"),
                              system())
        assert image.manifest_digest == pushed.manifest_digest
        assert fetch(client, image.layers[0].digest, image.layers[0].size)
    token_requests = token_registry.token_server.requests
    assert any("scope=repository%3Ateam%2Fsecret%3Apull" in r["path"] for r in token_requests)


def test_token_is_fetched_once_for_the_life_of_the_client(token_registry):
    push_image(token_registry.url, "team/once", "v1", [tar_layer({"x": b"x"})],
               auth=("alice", "wonderland"))
    before = len(token_registry.token_server.requests)
    with RegistryClient(token_registry.url, "team/once", credentials=ALICE,
                        limits=FAST) as client:
        for _ in range(3):
            client.get_manifest("v1")
    assert len(token_registry.token_server.requests) - before == 1


def test_token_auth_with_wrong_credentials_fails(token_registry):
    wrong = RegistryCredentials("alice", "bad-secret")
    with RegistryClient(token_registry.url, "team/secret", credentials=wrong,
                        limits=FAST) as client, pytest.raises(RegistryAuthFailed) as caught:
        client.check_access()
    assert "team/secret" in str(caught.value) and "bad-secret" not in str(caught.value)


def test_token_auth_anonymous_pull_is_refused(token_registry):
    push_image(token_registry.url, "team/secret2", "v1", [tar_layer({"x": b"x"})],
               auth=("alice", "wonderland"))
    with RegistryClient(token_registry.url, "team/secret2", limits=FAST) as client, \
            pytest.raises(RegistryAuthFailed, match="anonymous"):
        client.get_manifest("v1")


def test_redirected_blob_does_not_leak_the_authorization_header(token_registry):
    pushed = push_image(token_registry.url, "team/redirect", "v1", [tar_layer({"x": b"y"})],
                        auth=("alice", "wonderland"))
    with RegistryProxy(token_registry.url, redirect_blobs=True) as proxy, \
            RegistryClient(proxy.url, "team/redirect", credentials=ALICE, limits=FAST) as client:
        image = resolve_image(client, reference(proxy.url, "team/redirect", "v1"), system())
        data = fetch(client, image.layers[0].digest, image.layers[0].size)
        assert image.layers[0].digest == pushed.layer_digests[0]
        assert data
        assert proxy.blob_store is not None
        assert len(proxy.blob_store.requests) == 2  # the config and the layer
        assert proxy.blob_store.authorization_headers == []
        assert any(r.headers.get("authorization", "").startswith("Bearer ")
                   for r in proxy.requests if "/blobs/" in r.path)


# -- integrity ----------------------------------------------------------------


def test_corrupted_blob_is_a_digest_mismatch_and_not_retried(registry, big_image):
    pushed, layer = big_image
    with RegistryProxy(registry.url) as proxy, \
            RegistryClient(proxy.url, "test/big", limits=FAST) as client:
        proxy.faults.append(CorruptBody(times=None))
        with pytest.raises(DigestMismatch, match="corrupt"):
            fetch(client, pushed.layer_digests[0], len(layer))
        assert proxy.blob_gets() == 1


def test_blob_bigger_than_the_manifest_says_is_rejected(registry, big_image):
    pushed, layer = big_image
    with RegistryClient(registry.url, "test/big", limits=FAST) as client, \
            pytest.raises(DigestMismatch, match="larger than its manifest says"):
        fetch(client, pushed.layer_digests[0], len(layer) - 10)


def test_blob_that_grows_in_transit_stops_at_the_declared_size(registry, big_image):
    pushed, layer = big_image
    written: list[int] = []
    with RegistryProxy(registry.url) as proxy, \
            RegistryClient(proxy.url, "test/big", limits=FAST) as client:
        proxy.faults.append(ExtraBytes(extra=b"\0" * 100))
        with pytest.raises(DigestMismatch, match="larger than its manifest says"):
            client.fetch_blob(pushed.layer_digests[0], len(layer), io.BytesIO(),
                              on_bytes=written.append)
    assert sum(written) <= len(layer)


def test_blob_shorter_than_the_manifest_says_is_rejected(registry, big_image):
    pushed, layer = big_image
    with RegistryClient(registry.url, "test/big", limits=FAST) as client, \
            pytest.raises(DigestMismatch, match="ended after"):
        fetch(client, pushed.layer_digests[0], len(layer) + 10)


def test_blob_over_max_bytes_is_rejected_before_download(registry, big_image):
    pushed, layer = big_image
    with RegistryProxy(registry.url) as proxy, \
            RegistryClient(proxy.url, "test/big", limits=FAST) as client:
        with pytest.raises(ContentRejected, match="more than the limit"):
            client.fetch_blob(pushed.layer_digests[0], len(layer), io.BytesIO(), max_bytes=1000)
        assert proxy.blob_gets() == 0


# -- retries ------------------------------------------------------------------


def test_503_burst_is_retried_until_success(registry, big_image):
    pushed, layer = big_image
    with RegistryProxy(registry.url) as proxy, \
            RegistryClient(proxy.url, "test/big", limits=FAST) as client:
        proxy.faults.append(ServerErrors(status=503, times=2))
        assert fetch(client, pushed.layer_digests[0], len(layer)) == layer
        assert proxy.blob_gets() == 3


def test_persistent_5xx_gives_up_after_the_configured_attempts(registry, big_image):
    pushed, layer = big_image
    limits = Limits(http_timeout=10.0, http_retries=2)
    with RegistryProxy(registry.url) as proxy, \
            RegistryClient(proxy.url, "test/big", limits=limits) as client:
        proxy.faults.append(ServerErrors(status=502, times=None))
        with pytest.raises(RegistryUnavailable, match="502"):
            fetch(client, pushed.layer_digests[0], len(layer))
        assert proxy.blob_gets() == 2


def test_429_waits_for_retry_after(registry, big_image):
    pushed, layer = big_image
    with RegistryProxy(registry.url) as proxy, \
            RegistryClient(proxy.url, "test/big", limits=FAST) as client:
        proxy.faults.append(RateLimited(retry_after=1))
        started = time.monotonic()
        assert fetch(client, pushed.layer_digests[0], len(layer)) == layer
        assert time.monotonic() - started >= 1.0
        assert proxy.blob_gets() == 2


def test_4xx_other_than_429_is_not_retried(registry):
    with RegistryProxy(registry.url) as proxy, \
            RegistryClient(proxy.url, "test/big", limits=FAST) as client:
        proxy.faults.append(ServerErrors(r"/manifests/", status=400, times=None))
        with pytest.raises(RegistryProtocolError, match="answered 400") as caught:
            client.get_manifest("1")
        assert not caught.value.retryable
        assert proxy.count("GET", r"/manifests/") == 1


def test_connection_reset_mid_blob_resumes_with_a_range_request(registry, big_image):
    pushed, layer = big_image
    with RegistryProxy(registry.url) as proxy, \
            RegistryClient(proxy.url, "test/big", limits=FAST) as client:
        proxy.faults.append(ResetMidBody(after_bytes=1_500_000))
        assert fetch(client, pushed.layer_digests[0], len(layer)) == layer
        blob_requests = [r for r in proxy.requests if "/blobs/" in r.path]
        assert len(blob_requests) == 2
        assert "range" not in blob_requests[0].headers
        assert blob_requests[1].headers["range"].startswith("bytes=")
        resumed_from = int(blob_requests[1].headers["range"][6:-1])
        assert 0 < resumed_from <= 1_500_000


def test_connection_reset_without_range_support_restarts_cleanly(registry, big_image):
    pushed, layer = big_image
    with RegistryProxy(registry.url) as proxy, \
            RegistryClient(proxy.url, "test/big", limits=FAST) as client:
        # Strip the registry's Accept-Ranges so the client must start again.
        proxy.faults.append(_NoRanges())
        proxy.faults.append(ResetMidBody(after_bytes=1_000_000))
        progress: list[int] = []
        out = io.BytesIO()
        client.fetch_blob(pushed.layer_digests[0], len(layer), out, on_bytes=progress.append)
        assert out.getvalue() == layer
        assert sum(progress) == len(layer)
        assert all("range" not in r.headers for r in proxy.requests if "/blobs/" in r.path)


class _NoRanges(ResetMidBody):
    """Resets mid-body and hides Accept-Ranges (a server without range support)."""

    def __init__(self) -> None:
        super().__init__(after_bytes=1_000_000, times=1)

    def apply(self, request, reply):
        reply = super().apply(request, reply)
        reply.headers = [(k, v) for k, v in reply.headers if k.lower() != "accept-ranges"]
        return reply


def test_slow_trickle_within_the_timeout_still_completes(registry):
    data = tar_layer({"small": b"s" * 2000}, compression="none")
    pushed = push_image(registry.url, "test/slow", "1", [data])
    with RegistryProxy(registry.url) as proxy, \
            RegistryClient(proxy.url, "test/slow", limits=FAST) as client:
        proxy.faults.append(Trickle(chunk_size=1024, delay=0.05))
        assert fetch(client, pushed.layer_digests[0], len(data)) == data


def test_read_timeout_on_a_stalled_blob_is_retryable(registry):
    data = tar_layer({"small": b"s" * 2000}, compression="none")
    pushed = push_image(registry.url, "test/stall", "1", [data])
    limits = Limits(http_timeout=0.3, http_retries=2)
    with RegistryProxy(registry.url) as proxy, \
            RegistryClient(proxy.url, "test/stall", limits=limits) as client:
        proxy.faults.append(Trickle(chunk_size=512, delay=1.0, times=None))
        with pytest.raises(RegistryUnavailable) as caught:
            fetch(client, pushed.layer_digests[0], len(data))
        assert caught.value.retryable
        assert proxy.blob_gets() == 2


def test_unreachable_registry_is_unavailable_naming_the_host():
    from tests.support.services import refused_address

    port = int(refused_address().rsplit(":", 1)[1])
    limits = Limits(http_timeout=2.0, http_retries=1)
    with RegistryClient(f"http://127.0.0.1:{port}", "x/y", limits=limits) as client, \
            pytest.raises(RegistryUnavailable, match=f"127.0.0.1:{port}"):
        client.get_manifest("latest")
