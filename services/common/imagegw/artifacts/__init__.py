"""OCI artifacts: ready-made squashfs/SIF images from a registry, and converted
images shared between gateways through a configured registry (pushed with oras).

The public names are re-exported here; the modules behind them are private.
"""

from .content import (
    CONFIG_MEDIA_TYPE,
    META_MEDIA_TYPE,
    SIF_MEDIA_TYPE,
    SQUASHFS_MEDIA_TYPE,
    check_squashfs,
    extract_sif_squashfs,
)
from .ready_made import Artifact, build_ready_made, parse_artifact
from .shared import ConversionKey, SharedConversionRegistry, shared_conversions_for

__all__ = [
    "CONFIG_MEDIA_TYPE",
    "META_MEDIA_TYPE",
    "SIF_MEDIA_TYPE",
    "SQUASHFS_MEDIA_TYPE",
    "Artifact",
    "ConversionKey",
    "SharedConversionRegistry",
    "build_ready_made",
    "check_squashfs",
    "extract_sif_squashfs",
    "parse_artifact",
    "shared_conversions_for",
]
