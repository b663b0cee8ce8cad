"""What the pipeline needs of a layer: its name (the digest, for messages and indexes),
its compressed size (for progress) and a way to read its blob from the first byte.

A registry download being followed (`imagegw.registry.following.GrowingBlob`), a blob in
the cache and a test's tarball are all layers; the pipeline never knows which."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

__all__ = ["FileLayer", "Layer", "WaitedLayer"]


class Layer(Protocol):
    @property
    def name(self) -> str:
        """The layer's digest (or another name for it in messages)."""
        ...

    @property
    def size(self) -> int:
        """Compressed bytes of the blob."""
        ...

    def open(self) -> BinaryIO:
        """The compressed blob from its first byte (its reads may wait for a download)."""
        ...


@dataclass(frozen=True)
class FileLayer:
    """A layer blob in a file."""

    path: Path
    name: str

    @classmethod
    def of(cls, path: Path, name: str | None = None) -> FileLayer:
        return cls(Path(path), name or Path(path).name)

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def open(self) -> BinaryIO:
        return open(self.path, "rb")  # noqa: SIM115 - the caller closes it


@dataclass(frozen=True)
class WaitedLayer:
    """A layer whose file comes later: `path()` waits for it (a download that finishes)."""

    name: str
    size: int
    path: Callable[[], Path]

    def open(self) -> BinaryIO:
        return open(self.path(), "rb")  # noqa: SIM115 - the caller closes it
