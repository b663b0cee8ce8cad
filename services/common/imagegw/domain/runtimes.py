"""The container runtimes a system publishes images for, and the file each one runs.

`Platforms.<system>.runtimes` names them; "shifter" alone (the default) publishes the
exact OCI tree as `<id>.squashfs`. Any other runtime makes the system's one image carry
that runtime's files too (see imagegw.pipeline.runtime_files) and, for Apptainer and
SingularityCE, adds a `<id>.sif` wrapping the same squashfs.
"""

from __future__ import annotations

SHIFTER = "shifter"
ENROOT = "enroot"
APPTAINER = "apptainer"
SINGULARITY = "singularity"
RUNTIMES = (SHIFTER, ENROOT, APPTAINER, SINGULARITY)
DEFAULT_RUNTIMES = (SHIFTER,)

#: Compressors SingularityCE (and Apptainer before 1.1) can mount: not zstd.
SINGULARITY_COMPRESSORS = ("gzip", "xz", "lzo", "lz4", "lzma")

#: Sets of files an image may carry besides its own tree.
ENROOT_FILES = "enroot"
SINGULARITY_FILES = "singularity"

__all__ = [
    "APPTAINER", "DEFAULT_RUNTIMES", "ENROOT", "ENROOT_FILES", "RUNTIMES", "SHIFTER",
    "SINGULARITY", "SINGULARITY_COMPRESSORS", "SINGULARITY_FILES", "added_files",
    "runtime_file", "sif_file", "wants_sif",
]


def added_files(runtimes: tuple[str, ...]) -> tuple[str, ...]:
    """Which sets of runtime files an image for `runtimes` carries (sorted; () for Shifter)."""
    files = set()
    if ENROOT in runtimes:
        files.add(ENROOT_FILES)
    if APPTAINER in runtimes or SINGULARITY in runtimes:
        files.add(SINGULARITY_FILES)
    return tuple(sorted(files))


def wants_sif(runtimes: tuple[str, ...]) -> bool:
    """Whether a `<id>.sif` is published beside the squashfs."""
    return SINGULARITY_FILES in added_files(runtimes)


def sif_file(image_file: str) -> str:
    """The SIF published beside `image_file` ("<id>.squashfs" -> "<id>.sif")."""
    stem, dot, _ = image_file.rpartition(".")
    return f"{stem if dot else image_file}.sif"


def runtime_file(image_file: str, runtime: str) -> str:
    """The file name `runtime` runs for the image published as `image_file`."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}")
    if runtime in (APPTAINER, SINGULARITY):
        return sif_file(image_file)
    return image_file
