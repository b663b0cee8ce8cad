"""Reading a layer blob while it downloads, so that the conversion need not wait for it.

The download writes the blob into a temporary file of the layer cache and reports every
chunk written (`GrowingBlob.wrote`); a reader (`GrowingBlob.open`) reads the same file
through its own descriptor with `os.pread` (the writer's file position is untouched),
never past the bytes reported. The end of the blob is handed out only once the
download is verified (size and sha256): a reader whose download fails gets the
download's error where it would have seen the end. A cached blob (no download) is
read from the cache.

A download that starts over (a registry without Range support) rewrites the file from
its first byte: a reader that had read bytes of the abandoned attempt gets
`DownloadRestarted` (the conversion then starts over on complete downloads).

What a reader hands out before the end is not verified yet. The callers keep nothing
made from it (a layer's index, a published image) until the download is verified.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import BinaryIO

__all__ = ["DownloadRestarted", "GrowingBlob"]


class DownloadRestarted(Exception):
    """The download of a blob started over after a reader had read some of it."""

    def __init__(self, blob: str) -> None:
        super().__init__(f"the download of {blob} started over while it was being read")


class GrowingBlob:
    """One blob as it downloads: the writer reports, any number of readers follow."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self._changed = threading.Condition()
        self._fd: int | None = None  # a descriptor of the temporary file, while downloading
        self._written = 0  # bytes of the current attempt in the file
        self._attempt = 0
        self._path: Path | None = None  # the verified blob in the cache
        self._error: BaseException | None = None
        #: Whether a reader has been handed bytes before the download was verified.
        self.read_early = False

    # -- the download's side ---------------------------------------------------------

    def attach(self, out: BinaryIO) -> None:
        """The download starts writing into `out` (a readable, writable file)."""
        fd = os.dup(out.fileno())
        with self._changed:
            if self._fd is not None:
                os.close(self._fd)
            self._fd, self._written = fd, 0
            self._changed.notify_all()

    def wrote(self, count: int) -> None:
        """`count` more bytes are in the file; a negative count: the download restarts."""
        with self._changed:
            if count < 0:
                self._attempt += 1
                self._written = 0
            else:
                self._written += count
            self._changed.notify_all()

    def finished(self, path: Path) -> None:
        """The blob is verified and in the cache at `path`."""
        self._settle(path, None)

    def failed(self, error: BaseException) -> None:
        """The download failed (readers get `error`)."""
        self._settle(None, error)

    @property
    def done(self) -> bool:
        """Whether the download is over (verified, or failed)."""
        with self._changed:
            return self._path is not None or self._error is not None

    @property
    def complete(self) -> bool:
        """Whether every byte is here (verified, or about to be)."""
        with self._changed:
            return self._path is not None or self._written == self.size

    def _settle(self, path: Path | None, error: BaseException | None) -> None:
        with self._changed:
            self._path, self._error = path, error
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._changed.notify_all()

    # -- the readers' side ------------------------------------------------------------

    def open(self) -> BinaryIO:
        """A reader of the blob from its first byte (blocks in `read` for bytes to come)."""
        return _Follower(self)  # type: ignore[return-value]

    def _next(self, follower: _Follower, size: int) -> bytes:
        with self._changed:
            while True:
                if self._error is not None:
                    raise self._error
                if self._path is not None and follower.fd is None:
                    # Verified before this reader needed the file: read the cached blob.
                    follower.fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
                    follower.attempt = self._attempt
                if follower.fd is None and self._fd is not None:
                    follower.fd = os.dup(self._fd)
                    follower.attempt = self._attempt
                if follower.fd is not None and follower.attempt != self._attempt \
                        and self._path is None:
                    if follower.position:
                        raise DownloadRestarted(self.name)
                    follower.attempt = self._attempt  # nothing read yet: follow the new one
                available = self.size if self._path is not None else self._written
                if follower.fd is not None and follower.position < available:
                    count = min(size, available - follower.position)
                    attempt, early = follower.attempt, self._path is None
                    break
                if self._path is not None:
                    return b""  # the end of a verified blob
                self._changed.wait()
        data = os.pread(follower.fd, count, follower.position)
        if early:
            with self._changed:
                # The file shrinks, or its bytes change, only when the download restarts.
                if len(data) < count or attempt != self._attempt:
                    raise DownloadRestarted(self.name)
                self.read_early = True
        elif len(data) < count:
            raise OSError(f"the cached blob {self.name} is shorter than {self.size} bytes")
        follower.position += len(data)
        return data


class _Follower:
    """A file-like reader of a GrowingBlob (read and close)."""

    def __init__(self, blob: GrowingBlob) -> None:
        self._blob = blob
        self.fd: int | None = None
        self.attempt = 0
        self.position = 0
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed blob reader")
        if size is None or size < 0:
            size = max(1, self._blob.size - self.position)
        if size == 0:
            return b""
        return self._blob._next(self, size)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
