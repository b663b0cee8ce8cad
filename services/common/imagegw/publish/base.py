"""The publishing contract: the `Publisher` protocol and the temporary-name rules.

A publish puts `<id>.squashfs` and then `<id>.meta` into a system's image directory;
nothing partial ever carries a final name (temporaries are `.<final>.<random>.partial`).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from imagegw.domain.errors import InvalidRequest

from .access import Readers

#: on_bytes(done, total): bytes of the image copied so far, and its size.
ProgressCallback = Callable[[int, int], None]

CHUNK_SIZE = 4 * 1024 * 1024
FILE_MODE = 0o644
#: Private images (ACLs) and their meta files: the service account only. Shifter's runtime
#: reads images as root (NERSC/shifter#181 chose 0600 too).
PRIVATE_FILE_MODE = 0o600
DIR_MODE = 0o755

_TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_-]+\.partial")


@dataclass(frozen=True)
class DirEntry:
    """One regular file of an image directory, as a reconcile run sees it."""

    name: str
    size: int
    #: Seconds since the epoch of the last change: the later of mtime and ctime where the
    #: file system tells both (a hard link or rename updates ctime only), else mtime.
    changed: float


class Publisher(Protocol):
    """Puts finished images into one system's image directory, and takes them out."""

    def has_image(self, image_file: str, meta_file: str, size: int | None = None) -> bool:
        """Both final files exist (and the image has `size` bytes when given)."""
        ...

    def image_size(self, image_file: str) -> int:
        """Bytes of the published image; TransferFailed when it is not there."""
        ...

    def publish(
        self,
        source: Path,
        image_file: str,
        meta: bytes,
        meta_file: str,
        *,
        on_bytes: ProgressCallback | None = None,
        private: bool = False,
        readers: Readers | None = None,
    ) -> None:
        """Places the image, then the meta file; raises TransferFailed with the cause.
        A `private` image (one with ACLs) and its meta file are PRIVATE_FILE_MODE from
        creation on, and the image is always a copy of its own, never a hard link.
        `readers` (a private image on an enroot/Apptainer system) also get a POSIX ACL
        on the image that lets them read it (publish/access.py)."""
        ...

    def remove(self, image_file: str, meta_file: str) -> None:
        """Deletes the meta file, then the image; missing files are fine."""
        ...

    def cleanup_temporaries(self, older_than: float = 0.0) -> int:
        """Deletes temporaries at least `older_than` seconds old; returns how many."""
        ...

    def list_entries(self) -> list[DirEntry] | None:
        """The regular files of the image directory; None when the directory is not there."""
        ...

    def read_file(self, name: str, limit: int = 1 << 20) -> bytes | None:
        """Up to `limit` bytes of one file of the directory; None when it is not there."""
        ...

    def write_meta(self, meta: bytes, meta_file: str, *, private: bool = False) -> None:
        """Replaces a meta file atomically and durably (temporary, flush, rename);
        PRIVATE_FILE_MODE for a `private` image's meta file."""
        ...

    def remove_file(self, name: str) -> None:
        """Deletes one file of the directory; a missing file is fine."""
        ...


def temporary_name(final_name: str) -> str:
    """A fresh temporary name for `final_name`, for the same directory."""
    return f".{final_name}.{secrets.token_hex(8)}.partial"


def is_temporary(name: str) -> bool:
    """Whether `name` is a temporary left by a publish (and nothing else)."""
    return _TEMPORARY.fullmatch(name) is not None


def check_file_name(name: str) -> str:
    """Returns `name` if it is a plain file name inside the image directory."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\0" in name
        or name.startswith(".")
    ):
        raise InvalidRequest(
            f"invalid image file name {name!r}",
            hint="a plain file name without '/' that does not start with '.'",
        )
    return name
