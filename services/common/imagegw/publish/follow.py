"""Streaming an image to a remote system while the converter is still writing it.

tar2sqfs writes a squashfs front to back, except its 96-byte superblock, rewritten at
offset 0 at the end. `FollowingPublish` reads the growing file (staying `lag` bytes
behind its end, where a writer may still truncate and rewrite deduplicated blocks)
and sends it through an `OpenSshPublisher` stream; once the converter is done it sends
the rest, patches the superblock remotely and commits. The remote copy is checked
against the finished file (its `cksum`, read once here while the rest is sent) before
any rename; if the writer rewrote bytes already sent, the copy differs, the remote
temporary is dropped and `finish` says so (the caller publishes the file whole).
A conversion that fails ends the session without a commit: no temporary stays behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

from imagegw.domain.errors import TransferFailed
from imagegw.publish.base import ProgressCallback
from imagegw.publish.openssh import FRAME_SIZE, LocalChecksum, OpenSshPublisher, RemoteImage

log = logging.getLogger(__name__)

#: The squashfs superblock, written last at offset 0.
SUPERBLOCK_SIZE = 96
#: Bytes the reader stays behind the growing end while the writer runs.
DEFAULT_LAG = 32 * 1024 * 1024
#: While the writer runs, fewer bytes than this (or than the lag) wait for more: one
#: remote `dd` a frame.
MIN_FRAME = 4 * 1024 * 1024
_POLL = 0.05


class FollowingPublish:
    """Sends `growing` (a file another process writes) to `publisher` as it grows."""

    def __init__(
        self,
        publisher: OpenSshPublisher,
        growing: Path,
        image_file: str,
        meta_file: str,
        *,
        private: bool = False,
        lag: int = DEFAULT_LAG,
        on_bytes: ProgressCallback | None = None,
    ) -> None:
        self._publisher = publisher
        self._growing = Path(growing)
        self._names = (image_file, meta_file)
        self._private = private
        self._lag = lag
        self._on_bytes = on_bytes
        self._done = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._session: contextlib.ExitStack | None = None
        self._remote: RemoteImage | None = None
        self._fd = -1
        self._sent = 0
        self._thread = threading.Thread(target=self._run, name="follow-publish", daemon=True)

    def start(self) -> None:
        """Connects (TransferFailed here if no host takes it) and starts following."""
        session = contextlib.ExitStack()
        self._remote = session.enter_context(
            self._publisher.stream(*self._names, private=self._private))
        self._session = session
        self._thread.start()

    def finish(self, final: Path, meta: bytes) -> bool:
        """After the writer is done (its file now at `final`): sends the rest, patches the
        superblock, commits. False when nothing was published and `final` should be
        published whole: the writer rewrote bytes already sent, or the stream failed (the
        conversion is not lost to a connection that broke while it ran)."""
        converted = time.monotonic()
        self._done.set()
        self._thread.join()
        try:
            if isinstance(self._error, TransferFailed):
                log.warning("streaming %s failed (%s); publishing it whole", self._names[0],
                            self._error)
                return False
            if self._error is not None:
                raise self._error
            assert self._remote is not None
            if self._fd < 0:
                self._fd = os.open(final, os.O_RDONLY | os.O_CLOEXEC)
            if os.fstat(self._fd).st_ino != os.stat(final).st_ino:
                log.info("the converter started %s over; publishing it whole", final.name)
                return False
            ahead = self._sent
            try:
                with LocalChecksum(self._fd) as checksum:
                    self._send_available(to_end=True)
                    sent = time.monotonic()
                    self._remote.patch_head(os.pread(self._fd, SUPERBLOCK_SIZE, 0))
                    # The remote side reads its copy back while this side reads the file.
                    self._remote.end_data()
                    self._remote.commit(meta, checksum.result())
            except TransferFailed as exc:
                log.warning("streaming %s failed (%s); publishing it whole", self._names[0],
                            exc)
                return False
            done = time.monotonic()
            log.info("streamed %s to %s while it was built: %.1f of %.1f MB sent before the "
                     "conversion ended; then the rest in %.2f s, checked, synced and renamed "
                     "in %.2f s", self._names[0], self._remote.where, ahead / 1e6,
                     self._sent / 1e6, sent - converted, done - sent)
            return True
        finally:
            self.close()

    def close(self) -> None:
        """Stops following; without a commit the remote side drops its temporaries."""
        self._stop.set()
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- the reader ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and self._fd < 0:
                try:
                    self._fd = os.open(self._growing, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    if self._done.wait(_POLL):
                        return  # the writer finished first: finish() opens the result
            while not self._done.is_set():
                if not self._send_available(to_end=False):
                    self._done.wait(_POLL)
        except BaseException as exc:  # noqa: BLE001 - handed to finish()
            self._error = exc

    def _send_available(self, *, to_end: bool) -> bool:
        """Sends what the writer has added (all of it when `to_end`); whether it sent any."""
        assert self._remote is not None
        size = os.fstat(self._fd).st_size
        limit = size if to_end else size - self._lag
        if not to_end and limit - self._sent < min(MIN_FRAME, self._lag):
            return False
        sent_any = False
        while self._sent < limit and not self._stop.is_set():
            count = min(FRAME_SIZE, limit - self._sent)
            self._remote.send_file(self._fd, self._sent, count)
            self._sent += count
            sent_any = True
            if to_end and self._on_bytes is not None:  # the tail, after the conversion
                self._on_bytes(self._sent, size)
        return sent_any

