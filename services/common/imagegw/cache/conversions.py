"""The conversion cache: finished images under `root/conversions/<key>.<format>`.

The key is `ConversionKey.digest` (imagegw.artifacts): a hash of the manifest
digest, the format and the converter options that change the output. A second pull of
the same image (for another system, or after its tag moved back) publishes the stored
image instead of converting it again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["ConversionCache"]


class ConversionCache:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str, image_format: str) -> Path:
        if not key.isalnum() or not image_format.isalnum():
            raise ValueError(f"invalid conversion key {key!r} or format {image_format!r}")
        return self.dir / f"{key}.{image_format}"

    def lookup(self, key: str, image_format: str) -> Path | None:
        """The stored image, marked as just used; None when there is none."""
        path = self.path(key, image_format)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def store(self, key: str, image_format: str, built: Path) -> Path:
        """Puts `built` into the cache (a hard link when it can, else a copy) and
        returns the cached path; `built` stays where it is."""
        final = self.path(key, image_format)
        temporary = self.dir / f".{final.name}.{os.getpid()}.partial"
        temporary.unlink(missing_ok=True)
        try:
            try:
                os.link(built, temporary)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                shutil.copyfile(built, temporary)
            os.replace(temporary, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        log.debug("stored conversion %s (%d bytes)", final.name, final.stat().st_size)
        return final

    def entries(self) -> list[Path]:
        """Every stored image (temporaries left out)."""
        return sorted(p for p in self.dir.iterdir() if not p.name.startswith("."))
