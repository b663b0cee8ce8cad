"""Pure parsing of registry manifests, indexes and image configs.

Owns the media types we accept, the descriptors of layers, platform selection
from a multi-platform index, and the image config's metadata. No I/O here: the
callers hand in bytes and get frozen dataclasses or one of our errors back.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from imagegw.domain.config import Limits, Platform
from imagegw.domain.errors import (
    ContentRejected,
    DigestMismatch,
    PlatformNotFound,
    RegistryProtocolError,
)
from imagegw.domain.model import ImageMetadata

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

IMAGE_MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
#: What we send in `Accept` when asking for a manifest.
ACCEPTED_MANIFEST_TYPES = (*IMAGE_MANIFEST_TYPES, *INDEX_TYPES)

CONFIG_TYPES = (
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.oci.image.config.v1+json",
)

#: Layer media type -> compression ("gzip", "zstd" or "none").
LAYER_TYPES = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
}
_FOREIGN_MARKERS = (".foreign.", ".nondistributable.")

_SHA256 = re.compile(r"^sha256:[a-f0-9]{64}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
#: Used when a caller passes no limits (Limits is frozen, so sharing it is safe).
DEFAULT_LIMITS = Limits()
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64"}


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: what a manifest says about another blob."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class LayerDescriptor(Descriptor):
    """A layer of an image; `compression` is "gzip", "zstd" or "none"."""

    compression: str = "none"

    @property
    def foreign(self) -> bool:
        """A non-distributable (foreign) layer; its bytes may live at `urls`."""
        return any(marker in self.media_type for marker in _FOREIGN_MARKERS)


@dataclass(frozen=True)
class PlatformSpec:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


@dataclass(frozen=True)
class IndexEntry(Descriptor):
    """One manifest named by an index, with the platform it runs on."""

    platform: PlatformSpec | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def is_attestation(self) -> bool:
        if self.annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            return True
        return self.platform is not None and (
            self.platform.os, self.platform.architecture) == ("unknown", "unknown")


@dataclass(frozen=True)
class ImageManifest:
    """A single-platform image manifest (Docker schema 2 or OCI)."""

    media_type: str
    config: Descriptor
    layers: tuple[LayerDescriptor, ...]


@dataclass(frozen=True)
class ImageIndex:
    """A multi-platform index (Docker manifest list or OCI index)."""

    media_type: str
    manifests: tuple[IndexEntry, ...]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest_syntax(digest: str) -> None:
    """Raises ContentRejected unless `digest` is a sha256 digest we can verify."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ContentRejected(f"malformed digest {digest!r}")
    if not _SHA256.match(digest):
        raise ContentRejected(
            f"unsupported digest {digest!r}", hint="only sha256 digests can be verified"
        )


def verify_digest(data: bytes, digest: str, what: str) -> None:
    """Raises DigestMismatch unless `data` hashes to `digest`."""
    check_digest_syntax(digest)
    actual = sha256_digest(data)
    if actual != digest:
        raise DigestMismatch(f"{what} hashes to {actual}, expected {digest}")


def parse_manifest(
    body: bytes, media_type: str, limits: Limits = DEFAULT_LIMITS
) -> ImageManifest | ImageIndex:
    """Parses a manifest or index; `media_type` is the registry's Content-Type."""
    document = _load_json(body, "manifest")
    declared = document.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise RegistryProtocolError("manifest field 'mediaType' is not a string")
    kind = _manifest_kind(media_type, declared, document)
    if kind in INDEX_TYPES:
        return ImageIndex(media_type=kind, manifests=_index_entries(document))
    return _image_manifest(kind, document, limits)


def _manifest_kind(media_type: str, declared: str | None, document: dict[str, Any]) -> str:
    header = media_type.split(";", 1)[0].strip().lower()
    schema = document.get("schemaVersion")
    for candidate in (header, declared or ""):
        if candidate in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
            schema = 1
    if schema == 1:
        raise ContentRejected(
            "Docker schema 1 manifests are not supported",
            hint="push the image again with a current Docker or buildah (schema 2 or OCI)",
        )
    if schema != 2:
        raise RegistryProtocolError(f"manifest has schemaVersion {schema!r}, expected 2")
    for candidate in (header, declared or ""):
        if candidate in ACCEPTED_MANIFEST_TYPES:
            return candidate
    # A generic Content-Type (application/json) and no mediaType: OCI allows this.
    if "manifests" in document:
        return OCI_INDEX
    if "layers" in document and "config" in document:
        return OCI_MANIFEST
    shown = declared or header or "none"
    raise ContentRejected(f"unsupported manifest media type {shown!r}",
                          hint="expected a Docker schema 2 or OCI image manifest or index")


def _image_manifest(kind: str, document: dict[str, Any], limits: Limits) -> ImageManifest:
    config = _descriptor(document.get("config"), "config")
    if config.media_type not in CONFIG_TYPES:
        raise ContentRejected(
            f"not a container image: its config has media type {config.media_type!r}",
            hint="this looks like an OCI artifact, which cannot be run as a container",
        )
    raw_layers = document.get("layers")
    if not isinstance(raw_layers, list):
        raise RegistryProtocolError("manifest field 'layers' is missing or not a list")
    if len(raw_layers) > limits.max_layers:
        raise ContentRejected(
            f"image has {len(raw_layers)} layers, more than the limit of {limits.max_layers}"
        )
    layers = tuple(_layer(item, i, limits) for i, item in enumerate(raw_layers))
    return ImageManifest(media_type=kind, config=config, layers=layers)


def _layer(item: Any, index: int, limits: Limits) -> LayerDescriptor:
    base = _descriptor(item, f"layers[{index}]")
    compression = LAYER_TYPES.get(base.media_type)
    if compression is None:
        raise ContentRejected(f"layer {index} has unsupported media type {base.media_type!r}")
    if base.size > limits.max_layer_bytes:
        raise ContentRejected(
            f"layer {index} is {base.size} bytes, more than the limit of {limits.max_layer_bytes}"
        )
    return LayerDescriptor(media_type=base.media_type, digest=base.digest, size=base.size,
                           urls=base.urls, compression=compression)


def _index_entries(document: dict[str, Any]) -> tuple[IndexEntry, ...]:
    raw = document.get("manifests")
    if not isinstance(raw, list):
        raise RegistryProtocolError("index field 'manifests' is missing or not a list")
    entries = []
    for i, item in enumerate(raw):
        base = _descriptor(item, f"manifests[{i}]")
        annotations = item.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise RegistryProtocolError(f"manifests[{i}].annotations is not an object")
        entries.append(IndexEntry(
            media_type=base.media_type, digest=base.digest, size=base.size, urls=base.urls,
            platform=_platform(item.get("platform"), i),
            annotations={str(k): str(v) for k, v in annotations.items()},
        ))
    return tuple(entries)


def _platform(raw: Any, index: int) -> PlatformSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RegistryProtocolError(f"manifests[{index}].platform is not an object")
    os_name, arch, variant = raw.get("os"), raw.get("architecture"), raw.get("variant") or ""
    if not isinstance(os_name, str) or not isinstance(arch, str) or not isinstance(variant, str):
        raise RegistryProtocolError(f"manifests[{index}].platform needs string os and architecture")
    return PlatformSpec(os=os_name, architecture=arch, variant=variant)


def _descriptor(raw: Any, where: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise RegistryProtocolError(f"manifest field '{where}' is missing or not an object")
    media_type, digest, size = raw.get("mediaType"), raw.get("digest"), raw.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise RegistryProtocolError(f"{where} has no mediaType")
    if not isinstance(digest, str):
        raise RegistryProtocolError(f"{where} has no digest")
    check_digest_syntax(digest)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise RegistryProtocolError(f"{where} has no valid size")
    urls = raw.get("urls") or ()
    if not isinstance(urls, list | tuple) or not all(isinstance(u, str) for u in urls):
        raise RegistryProtocolError(f"{where}.urls is not a list of strings")
    return Descriptor(media_type=media_type, digest=digest, size=size, urls=tuple(urls))


def _load_json(body: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryProtocolError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise RegistryProtocolError(f"{what} is not a JSON object")
    return document


def _normal_arch(arch: str) -> str:
    return _ARCH_ALIASES.get(arch.lower(), arch.lower())


def _variant_matches(arch: str, wanted: str, offered: str) -> bool:
    if not wanted:
        return True
    if arch == "arm64":
        return (wanted or "v8") == (offered or "v8")
    return wanted == offered


def select_platform(index: ImageIndex, platform: Platform) -> IndexEntry:
    """The index entry for `platform`'s os/architecture(/variant); else PlatformNotFound."""
    arch = _normal_arch(platform.architecture)
    images = [e for e in index.manifests if not e.is_attestation and e.platform is not None]
    for entry in images:
        offered = entry.platform
        assert offered is not None
        if (offered.os == platform.os and _normal_arch(offered.architecture) == arch
                and _variant_matches(arch, platform.variant, offered.variant)):
            return entry
    wanted = PlatformSpec(platform.os, arch, platform.variant)
    available = ", ".join(str(e.platform) for e in images) or "none"
    raise PlatformNotFound(
        f"the image has no manifest for {wanted}", hint=f"it is built for: {available}"
    )


def parse_image_config(body: bytes) -> tuple[dict[str, Any], ImageMetadata]:
    """The decoded config and the runtime metadata in it (missing or null -> empty)."""
    document = _load_json(body, "image config")
    runtime = document.get("config") or {}
    if not isinstance(runtime, dict):
        raise ContentRejected("image config field 'config' is not an object")
    labels = runtime.get("Labels") or {}
    if not isinstance(labels, dict):
        raise ContentRejected("image config field 'Labels' is not an object")
    volumes = runtime.get("Volumes") or {}
    if not isinstance(volumes, dict):
        raise ContentRejected("image config field 'Volumes' is not an object")
    metadata = ImageMetadata(
        env=_strings(runtime, "Env"),
        entrypoint=_strings(runtime, "Entrypoint"),
        cmd=_strings(runtime, "Cmd"),
        workdir=_string(runtime, "WorkingDir"),
        user=_string(runtime, "User"),
        labels={str(k): str(v) for k, v in labels.items()},
        volumes=tuple(sorted(str(k) for k in volumes)),
    )
    return document, metadata


def config_diff_ids(config: dict[str, Any]) -> tuple[str, ...] | None:
    """The config's `rootfs.diff_ids`, or None when absent."""
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        return None
    return tuple(str(d) for d in rootfs["diff_ids"])


def _strings(runtime: dict[str, Any], key: str) -> tuple[str, ...]:
    value = runtime.get(key)
    if value is None:
        return ()
    if isinstance(value, str):  # Docker accepts a shell-form string here
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ContentRejected(f"image config field {key!r} is not a list of strings")
    return tuple(value)


def _string(runtime: dict[str, Any], key: str) -> str:
    value = runtime.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ContentRejected(f"image config field {key!r} is not a string")
    return value
