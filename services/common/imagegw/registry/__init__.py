"""Pulling images from Docker/OCI registries: client, manifests, resolution, layer cache.

The public names are re-exported here; the modules behind them are private.
"""

from .blobcache import BlobCache
from .client import RegistryClient
from .manifest import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    IndexEntry,
    LayerDescriptor,
    PlatformSpec,
    parse_image_config,
    parse_manifest,
    select_platform,
)
from .resolve import ResolvedImage, resolve_image

__all__ = [
    "BlobCache",
    "Descriptor",
    "ImageIndex",
    "ImageManifest",
    "IndexEntry",
    "LayerDescriptor",
    "PlatformSpec",
    "RegistryClient",
    "ResolvedImage",
    "parse_image_config",
    "parse_manifest",
    "resolve_image",
    "select_platform",
]
