"""The SIF a system publishing for Apptainer/SingularityCE gets beside each image.

Used where a finished squashfs is published without a conversion of ours (imports,
ready-made artifacts); the worker's own conversions keep their SIF in the conversion
cache (worker/build.py). The SIF goes first: a published image always has its SIF.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from imagegw.domain.config import Platform
from imagegw.domain.runtimes import sif_file, wants_sif
from imagegw.pipeline.sif import write_sif

from .access import Readers
from .base import Publisher

__all__ = ["has_published", "publish_sif"]


def publish_sif(publisher: Publisher, platform: Platform, squashfs: Path, image_file: str,
                meta: bytes, meta_file: str, *, identity: str, private: bool = False,
                readers: Readers | None = None) -> None:
    """Writes and publishes `<id>.sif` wrapping `squashfs`, when the system wants one."""
    if not wants_sif(platform.runtimes):
        return
    name = sif_file(image_file)
    with tempfile.TemporaryDirectory(prefix=".sif-", dir=Path(squashfs).parent) as scratch:
        sif = Path(scratch) / name
        write_sif(Path(squashfs), sif, architecture=platform.architecture, identity=identity)
        publisher.publish(sif, name, meta, meta_file, private=private, readers=readers)


def has_published(publisher: Publisher, platform: Platform, image_file: str,
                  meta_file: str) -> bool:
    """The image, its meta file and (when the system wants one) its SIF are there."""
    return publisher.has_image(image_file, meta_file) and (
        not wants_sif(platform.runtimes) or publisher.has_image(sif_file(image_file), meta_file))
