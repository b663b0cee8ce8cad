"""Resolution of an image reference to one platform's manifest, layers and config.

`resolve_image` follows an index to the manifest for the system's platform,
fetches and verifies the image config (from the blob cache when given one) and
returns a frozen `ResolvedImage`: everything the pipeline needs to fetch layers.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from imagegw.domain.config import Limits, Platform
from imagegw.domain.errors import ContentRejected, DigestMismatch, RegistryProtocolError
from imagegw.domain.model import ImageMetadata
from imagegw.domain.reference import ImageReference

from .blobcache import BlobCache
from .client import RegistryClient
from .manifest import (
    DEFAULT_LIMITS,
    ImageIndex,
    ImageManifest,
    LayerDescriptor,
    config_diff_ids,
    parse_image_config,
    parse_manifest,
    select_platform,
)

logger = logging.getLogger(__name__)

#: An index may point at another index (rare, but allowed by OCI); this bounds it.
MAX_INDEX_DEPTH = 3


@dataclass(frozen=True)
class ResolvedImage:
    """One platform's image: its digests, layers (oldest first), metadata and config."""

    reference: str
    manifest_digest: str
    index_digest: str
    config_digest: str
    image_id: str
    layers: tuple[LayerDescriptor, ...]
    metadata: ImageMetadata
    config: dict[str, Any]


def resolve_image(
    client: RegistryClient,
    reference: ImageReference,
    platform: Platform,
    limits: Limits = DEFAULT_LIMITS,
    *,
    cache: BlobCache | None = None,
    on_manifest: Callable[[bytes, str], object] | None = None,
) -> ResolvedImage:
    """Resolves `reference` for `platform`; `cache`, when given, holds the config blob.
    `on_manifest` sees the platform manifest's exact bytes and digest before any blob is
    fetched (the signature policy judges them there, and may raise; what it returns is
    ignored)."""
    body, media_type, digest = client.get_manifest(reference.manifest_ref)
    parsed = parse_manifest(body, media_type, limits)
    index_digest = ""
    for _ in range(MAX_INDEX_DEPTH):
        if not isinstance(parsed, ImageIndex):
            break
        index_digest = index_digest or digest
        entry = select_platform(parsed, platform)
        body, media_type, digest = client.get_manifest(entry.digest)
        if len(body) != entry.size:
            raise DigestMismatch(
                f"manifest {entry.digest} is {len(body)} bytes; the index says {entry.size}"
            )
        parsed = parse_manifest(body, media_type, limits)
    if not isinstance(parsed, ImageManifest):
        raise RegistryProtocolError(f"{reference}: indexes nested deeper than {MAX_INDEX_DEPTH}")
    if on_manifest is not None:
        on_manifest(body, digest)
    config_bytes = _config_bytes(client, parsed, limits, cache)
    config, metadata = parse_image_config(config_bytes)
    diff_ids = config_diff_ids(config)
    if diff_ids is not None and len(diff_ids) != len(parsed.layers):
        raise ContentRejected(
            f"{reference}: the config lists {len(diff_ids)} layers, "
            f"the manifest {len(parsed.layers)}"
        )
    logger.info("resolved %s to %s (%d layers)", reference, digest, len(parsed.layers))
    return ResolvedImage(
        reference=str(reference),
        manifest_digest=digest,
        index_digest=index_digest,
        config_digest=parsed.config.digest,
        image_id=parsed.config.digest.split(":", 1)[1],
        layers=parsed.layers,
        metadata=metadata,
        config=config,
    )


def _config_bytes(
    client: RegistryClient, manifest: ImageManifest, limits: Limits, cache: BlobCache | None
) -> bytes:
    descriptor = manifest.config
    if descriptor.size > limits.max_config_bytes:
        raise ContentRejected(
            f"image config is {descriptor.size} bytes, "
            f"more than the limit of {limits.max_config_bytes}"
        )

    def fetch(out: BinaryIO) -> None:
        client.fetch_blob(descriptor.digest, descriptor.size, out,
                          max_bytes=limits.max_config_bytes)

    if cache is not None:
        # fetch_blob checks size and sha256 as it writes: the cache need not hash it again.
        path, _ = cache.ensure_verified(descriptor.digest, descriptor.size, fetch)
        return path.read_bytes()
    buffer = io.BytesIO()
    fetch(buffer)
    return buffer.getvalue()
