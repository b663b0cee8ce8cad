"""Pushing test images to a registry: blobs, manifests, multi-platform indexes.

Independent of the production client on purpose (so one bug cannot hide
itself). Layers are given as bytes, already compressed (gzip/zstd detected by
magic, anything else is an uncompressed tar); configs are made up when not given.

    pushed = push_image(registry.url, "team/app", "1.0", [layer_bytes])
    index = push_index(registry.url, "team/app", "multi", [amd64_image, arm64_image])
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin

import urllib3
import zstandard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

_OCI_LAYER = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
              "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
              "none": "application/vnd.oci.image.layer.v1.tar"}
_DOCKER_LAYER = {"gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                 "none": "application/vnd.docker.image.rootfs.diff.tar"}
_TIMEOUT = urllib3.Timeout(connect=5, read=30)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class PushedImage:
    """What push_image put in the registry."""

    repository: str
    tag: str | None
    manifest_digest: str
    media_type: str
    manifest: bytes
    config_digest: str
    config: bytes
    layer_digests: tuple[str, ...]
    platform: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PushedIndex:
    """What push_index put in the registry."""

    repository: str
    tag: str | None
    digest: str
    media_type: str
    body: bytes


class _Session:
    """Requests to one registry with the Basic or Bearer dance answered (push scope)."""

    def __init__(self, registry_url: str, repository: str, auth: tuple[str, str] | None) -> None:
        self.base = registry_url.rstrip("/")
        self.repository = repository
        self.auth = auth
        self.http = urllib3.PoolManager(retries=False, timeout=_TIMEOUT)
        self.header: str | None = None

    def request(self, method: str, url: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        url = urljoin(self.base + "/", url)
        headers = dict(headers or {})
        response = self._send(method, url, body, headers)
        if response.status == 401:
            self._login(response.headers.get("WWW-Authenticate", ""))
            response = self._send(method, url, body, headers)
        return response

    def _send(self, method: str, url: str, body: bytes | None,
              headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        if self.header:
            headers["Authorization"] = self.header
        return self.http.request(method, url, body=body, headers=headers, redirect=False)

    def _login(self, challenge: str) -> None:
        scheme, _, rest = challenge.partition(" ")
        basic = None
        if self.auth:
            basic = "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()
        if scheme.lower() == "basic":
            self.header = basic
            return
        params = dict(part.split("=", 1) for part in rest.split(","))
        params = {k.strip(): v.strip().strip('"') for k, v in params.items()}
        query = urlencode({"service": params.get("service", ""),
                           "scope": f"repository:{self.repository}:pull,push"})
        headers = {"Authorization": basic} if basic else {}
        reply = self.http.request("GET", f"{params['realm']}?{query}", headers=headers)
        if reply.status != 200:
            raise RuntimeError(f"token server refused the push login: {reply.status}")
        self.header = "Bearer " + reply.json()["token"]

    def close(self) -> None:
        self.http.clear()


def _expect(response: urllib3.BaseHTTPResponse, statuses: tuple[int, ...], what: str) -> None:
    if response.status not in statuses:
        raise RuntimeError(f"{what}: registry answered {response.status}: {response.data[:500]!r}")


def _push_blob(session: _Session, data: bytes) -> str:
    digest = digest_of(data)
    path = f"/v2/{session.repository}/blobs/"
    if session.request("HEAD", path + digest).status == 200:
        return digest
    started = session.request("POST", path + "uploads/")
    _expect(started, (202,), "starting a blob upload")
    location = started.headers["Location"]
    separator = "&" if "?" in location else "?"
    done = session.request("PUT", f"{location}{separator}{urlencode({'digest': digest})}",
                           body=data, headers={"Content-Type": "application/octet-stream"})
    _expect(done, (201,), f"uploading blob {digest}")
    return digest


def _push_manifest(session: _Session, ref: str, body: bytes, media_type: str) -> str:
    response = session.request("PUT", f"/v2/{session.repository}/manifests/{ref}", body=body,
                               headers={"Content-Type": media_type})
    _expect(response, (201,), f"pushing manifest {ref}")
    return digest_of(body)


def push_blob(registry_url: str, repository: str, data: bytes, *,
              auth: tuple[str, str] | None = None) -> str:
    """Uploads one blob (monolithic POST then PUT ?digest=); returns its digest."""
    session = _Session(registry_url, repository, auth)
    try:
        return _push_blob(session, data)
    finally:
        session.close()


def push_manifest(registry_url: str, repository: str, ref: str, body: bytes, media_type: str,
                  *, auth: tuple[str, str] | None = None) -> str:
    """PUTs raw manifest bytes under tag or digest `ref` (for crafted manifests)."""
    session = _Session(registry_url, repository, auth)
    try:
        return _push_manifest(session, ref, body, media_type)
    finally:
        session.close()


def compression_of(layer: bytes) -> str:
    if layer[:2] == b"\x1f\x8b":
        return "gzip"
    if layer[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return "none"


def diff_id(layer: bytes) -> str:
    """The digest of the uncompressed tar (what a config's rootfs.diff_ids lists)."""
    kind = compression_of(layer)
    if kind == "gzip":
        return digest_of(gzip.decompress(layer))
    if kind == "zstd":
        return digest_of(zstandard.ZstdDecompressor().decompressobj().decompress(layer))
    return digest_of(layer)


def default_config(layers: Sequence[bytes], platform: dict[str, str] | None = None,
                   runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    platform = platform or {"os": "linux", "architecture": "amd64"}
    config: dict[str, Any] = {
        "architecture": platform.get("architecture", "amd64"),
        "os": platform.get("os", "linux"),
        "config": runtime if runtime is not None else {"Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id(layer) for layer in layers]},
    }
    if platform.get("variant"):
        config["variant"] = platform["variant"]
    return config


def push_image(
    registry_url: str,
    repository: str,
    tag: str | None,
    layers: list[bytes],
    config: dict[str, Any] | None = None,
    *,
    media: str = "oci",
    auth: tuple[str, str] | None = None,
    platform: dict[str, str] | None = None,
) -> PushedImage:
    """Pushes layers, a config and a manifest ("oci" or "docker" media types).

    `tag=None` pushes the manifest by digest only (as children of an index are).
    """
    if media not in ("oci", "docker"):
        raise ValueError("media must be 'oci' or 'docker'")
    config_bytes = json.dumps(config or default_config(layers, platform), sort_keys=True).encode()
    session = _Session(registry_url, repository, auth)
    try:
        layer_digests = tuple(_push_blob(session, layer) for layer in layers)
        config_digest = _push_blob(session, config_bytes)
        layer_types = _OCI_LAYER if media == "oci" else _DOCKER_LAYER
        manifest_type = OCI_MANIFEST if media == "oci" else DOCKER_MANIFEST
        manifest = {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": OCI_CONFIG if media == "oci" else DOCKER_CONFIG,
                       "digest": config_digest, "size": len(config_bytes)},
            "layers": [{"mediaType": layer_types[compression_of(layer)], "digest": digest,
                        "size": len(layer)} for layer, digest in zip(layers, layer_digests,
                                                                     strict=True)],
        }
        body = json.dumps(manifest, indent=2).encode()
        digest = _push_manifest(session, tag or digest_of(body), body, manifest_type)
    finally:
        session.close()
    return PushedImage(
        repository=repository, tag=tag, manifest_digest=digest, media_type=manifest_type,
        manifest=body, config_digest=config_digest, config=config_bytes,
        layer_digests=layer_digests,
        platform=dict(platform or {"os": "linux", "architecture": "amd64"}),
    )


def index_entry(image: PushedImage, platform: dict[str, str] | None = None,
                annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """An index entry for `image` (its own platform unless another is given)."""
    entry: dict[str, Any] = {"mediaType": image.media_type, "digest": image.manifest_digest,
                             "size": len(image.manifest),
                             "platform": dict(platform or image.platform)}
    if annotations:
        entry["annotations"] = annotations
    return entry


def push_index(
    registry_url: str,
    repository: str,
    tag: str | None,
    images: Sequence[PushedImage],
    *,
    media: str = "oci",
    auth: tuple[str, str] | None = None,
    extra_entries: Sequence[dict[str, Any]] = (),
) -> PushedIndex:
    """Pushes an OCI index or ("docker") a manifest list naming `images` by platform.

    `extra_entries` are appended as given, e.g. `index_entry(img, {"os": "unknown",
    "architecture": "unknown"})` for an attestation manifest.
    """
    if media not in ("oci", "docker"):
        raise ValueError("media must be 'oci' or 'docker'")
    media_type = OCI_INDEX if media == "oci" else DOCKER_LIST
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [index_entry(image) for image in images] + list(extra_entries),
    }
    body = json.dumps(document, indent=2).encode()
    digest = push_manifest(registry_url, repository, tag or digest_of(body), body, media_type,
                           auth=auth)
    return PushedIndex(repository=repository, tag=tag, digest=digest, media_type=media_type,
                       body=body)
