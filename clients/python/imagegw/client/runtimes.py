"""Which published file each container runtime runs, and where the nodes see it.

The gateway publishes `<id>.squashfs` (Shifter, enroot/Pyxis, and Apptainer as a bare
squashfs) and, on systems that publish for Apptainer/SingularityCE, `<id>.sif`. The
directory is the one compute nodes mount: `--image-dir`, else IMAGEGW_IMAGE_DIR, else
udiRoot.conf's `imagePath` (Shifter's own setting for it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from imagegw.client.udiroot import DEFAULT_PATH, read_udiroot

RUNTIMES = ("shifter", "enroot", "apptainer", "singularity")

__all__ = ["RUNTIMES", "image_directory", "runtime_file", "runtime_path"]


def runtime_file(image_file: str, runtime: str) -> str:
    """The file name `runtime` runs for the image published as `image_file`."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}")
    if runtime in ("apptainer", "singularity"):
        stem, dot, _ = image_file.rpartition(".")
        return f"{stem if dot else image_file}.sif"
    return image_file


def image_directory(environ: Mapping[str, str], given: str | None = None) -> str:
    """The image directory as the nodes see it ("" when nothing names one)."""
    if given:
        return given
    if environ.get("IMAGEGW_IMAGE_DIR"):
        return environ["IMAGEGW_IMAGE_DIR"]
    return read_udiroot(environ.get("UDIROOT_CONF") or DEFAULT_PATH).get("imagePath", "")


def runtime_path(image_file: str, runtime: str, image_dir: str) -> str:
    """The absolute path of the file `runtime` runs."""
    if not image_file:
        raise ValueError("the image has no published file yet")
    if not image_dir:
        raise ValueError("no image directory: give --image-dir, set IMAGEGW_IMAGE_DIR or "
                         "imagePath in udiRoot.conf")
    return os.path.join(image_dir, runtime_file(image_file, runtime))
