"""Streaming an image to a remote system while the converter is still writing it.

tar2sqfs writes a squashfs front to back, except its 96-byte superblock, rewritten at
offset 0 at the end, and the blocks of a file found to duplicate an earlier one, which
it truncates away and writes over. `FollowingPublish` sends the growing file through an
`OpenSshPublisher` stream as it grows, and keeps a sample of each frame it sent (a CRC
of its last 4 KiB): while the writer runs, the frames of the last `watch` bytes are
checked every poll, and once it is done, all of them; a frame whose sample changed, or
that reaches past the file's end, is cut from the remote temporary and sent again, from
its start. Then the rest is sent, the superblock patched remotely, and the commit made.
The remote copy is checked against the finished file (its `cksum`, read once here)
before any rename, so a rewrite no sample saw is still caught: the copy differs, the
remote temporary is dropped and `finish` says so (the caller publishes the file whole).
A conversion that fails ends the session without a commit: no temporary stays behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import zlib
from pathlib import Path

from imagegw.domain.errors import TransferFailed
from imagegw.publish.base import ProgressCallback
from imagegw.publish.openssh import FRAME_SIZE, LocalChecksum, OpenSshPublisher, RemoteImage

log = logging.getLogger(__name__)

#: The squashfs superblock, written last at offset 0.
SUPERBLOCK_SIZE = 96
#: While the writer runs, the samples of the frames in this many bytes before the sent
#: end are checked every poll (a duplicate file's blocks, truncated away and written over,
#: are at most one file back); once it is done, every frame's.
DEFAULT_WATCH = 32 * 1024 * 1024
#: The bytes at the end of each sent frame whose CRC is its sample.
SAMPLE_SIZE = 4096
#: While the writer runs, fewer bytes than this (or than the lag) wait for more: one
#: remote `dd` a frame.
MIN_FRAME = 4 * 1024 * 1024
#: Bytes the reader stays behind the growing end while the writer runs: one frame (what
#: the writer rewrites further back is found by the frames' samples and sent again).
DEFAULT_LAG = MIN_FRAME
_POLL = 0.05


def _local_checksum(final: Path) -> LocalChecksum:
    """The `cksum` of the finished file at `final`, computed from now on."""
    try:
        fd = os.open(final, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise TransferFailed(f"cannot read the built image {final}: "
                             f"{exc.strerror or exc}") from exc
    try:
        return LocalChecksum(fd)  # it reads the file through its own open file
    finally:
        os.close(fd)


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
        watch: int = DEFAULT_WATCH,
        on_bytes: ProgressCallback | None = None,
    ) -> None:
        self._publisher = publisher
        self._growing = Path(growing)
        self._names = (image_file, meta_file)
        self._private = private
        self._lag = lag
        self._watch = watch
        self._on_bytes = on_bytes
        self._done = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._session: contextlib.ExitStack | None = None
        self._remote: RemoteImage | None = None
        self._fd = -1
        self._sent = 0
        self._resent = 0
        #: (start, end, CRC of the sample) of every frame sent, in order.
        self._frames: list[tuple[int, int, int]] = []
        self._thread = threading.Thread(target=self._run, name="follow-publish", daemon=True)

    def start(self) -> None:
        """Starts following, in a thread of its own: it connects (to the first host that
        takes the stream), then sends the file as it grows. The converter need not wait
        for the connection (~0.2 s: OpenSSH's key exchange, login, the remote script); one
        that fails shows in `finish` (False: publish the file whole, which says why)."""
        self._thread.start()

    def finish(self, final: Path, meta: bytes) -> bool:
        """After the writer is done (its file now at `final`): sends the rest, patches the
        superblock, commits. False when nothing was published and `final` should be
        published whole: the writer rewrote bytes already sent, or the stream failed (the
        conversion is not lost to a connection that broke while it ran)."""
        converted = time.monotonic()
        self._done.set()
        checksum: LocalChecksum | None = None
        try:
            try:
                # The finished file's CRC starts now, beside the last frames the reader is
                # sending (they are no longer in its way: 0.05-0.3 s measured).
                checksum = _local_checksum(final)
            except TransferFailed as exc:
                log.warning("cannot check %s (%s); publishing it whole", self._names[0], exc)
                return False
            self._thread.join()
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
                self._send_again_what_changed(window=None)
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
                     "conversion ended (%.1f MB sent again: rewritten by the converter); "
                     "then the rest in %.2f s, checked, synced and renamed in %.2f s",
                     self._names[0], self._remote.where, ahead / 1e6, self._sent / 1e6,
                     self._resent / 1e6, sent - converted, done - sent)
            return True
        finally:
            if checksum is not None:
                checksum.close()
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
            self._session = contextlib.ExitStack()
            self._remote = self._session.enter_context(
                self._publisher.stream(*self._names, private=self._private))
            while not self._stop.is_set() and self._fd < 0:
                try:
                    self._fd = os.open(self._growing, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    if self._done.wait(_POLL):
                        return  # the writer finished first: finish() opens the result
            while not self._done.is_set():
                self._send_again_what_changed(window=self._watch)
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
            start, end = self._sent, self._sent + count
            # Sampled before it is sent: a rewrite while it is sent shows as a change, and
            # a frame the writer cut short meanwhile (sent padded) as one past the end.
            self._frames.append((start, end, self._sample(end)))
            self._remote.send_file(self._fd, start, count)
            self._sent = end
            sent_any = True
            if to_end and self._on_bytes is not None:  # the tail, after the conversion
                self._on_bytes(self._sent, size)
        return sent_any

    def _sample(self, end: int) -> int:
        """The CRC of the SAMPLE_SIZE bytes before `end` (the superblock left out: it is
        patched last); -1 where the file no longer holds them all."""
        start = max(SUPERBLOCK_SIZE, end - SAMPLE_SIZE)
        data = os.pread(self._fd, end - start, start) if end > start else b""
        return zlib.crc32(data) if len(data) == max(0, end - start) else -1

    def _send_again_what_changed(self, *, window: int | None) -> None:
        """Cuts the remote temporary back to the start of the first sent frame (of those
        ending in the last `window` bytes sent; None: of all) that the writer rewrote or
        cut short since; the next sends start there."""
        assert self._remote is not None
        size = os.fstat(self._fd).st_size
        first = 0 if window is None else self._sent - window
        oldest = len(self._frames)
        while oldest > 0 and self._frames[oldest - 1][1] >= first:
            oldest -= 1
        for number, (start, end, sample) in enumerate(self._frames[oldest:], oldest):
            if end > size or self._sample(end) != sample:
                log.debug("%s: %d bytes from %d changed after they were sent; sending "
                          "them again", self._names[0], self._sent - start, start)
                self._remote.truncate(start)
                self._resent += self._sent - start
                self._sent = start
                del self._frames[number:]
                return
