"""Gets a layer ready for conversion: its verified blob in the cache and its LayerIndex.

A layer being downloaded is indexed while it streams: `IndexingTee` writes the
(hash-checked) bytes to the cache's temporary file and hands each chunk to an indexer
thread that decompresses and indexes it, so the download, the decompression and the
header parsing overlap. The index is stored beside the blob (a JSON sidecar, one per
member policy) and a cached layer is never indexed again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from imagegw.worker.registry.blobcache import BlobCache

from .decompress import open_layer, open_layer_stream
from .flatten import LayerIndex, index_layer
from .members import MemberPolicy

log = logging.getLogger(__name__)

#: Chunks (of about 1 MiB) buffered between the download and the indexer thread.
QUEUE_CHUNKS = 16
#: Bumped whenever LayerIndex or the member rules change what an index holds.
INDEX_VERSION = 1
_JOIN_TIMEOUT = 600.0

__all__ = ["PreparedLayer", "IndexingTee", "prepare_layer", "index_name", "QUEUE_CHUNKS"]


@dataclass(frozen=True)
class PreparedLayer:
    path: Path
    index: LayerIndex
    #: Whether this call downloaded the blob (False: it was cached).
    downloaded: bool
    #: Whether the index came from the download stream (False: cache or a re-read).
    indexed_while_downloading: bool = False


def index_name(policy: MemberPolicy) -> str:
    """The sidecar name of an index made under `policy` (the policy changes modes)."""
    return f"index-v{INDEX_VERSION}-{'setuid' if policy.keep_setuid else 'nosetuid'}.json"


def prepare_layer(
    cache: BlobCache,
    digest: str,
    size: int,
    fetch: Callable[[BinaryIO], None],
    *,
    policy: MemberPolicy,
    max_uncompressed: int,
) -> PreparedLayer:
    """The cached blob of `digest` and its index, downloading and indexing as needed.

    `fetch(out)` must verify size and sha256 while it writes (RegistryClient.fetch_blob).
    """
    sidecar = cache.sidecar_path(digest, index_name(policy))
    streamed: list[LayerIndex] = []

    def fetch_and_index(out: BinaryIO) -> None:
        tee = IndexingTee(out, layer=digest, policy=policy, max_uncompressed=max_uncompressed)
        try:
            fetch(tee)
        except BaseException:
            tee.abandon()
            raise
        index = tee.finish()
        if index is not None:
            _write_index(sidecar, index)
            streamed.append(index)

    path, downloaded = cache.ensure_verified(digest, size, fetch_and_index)
    # The index made from this (verified) download is used as is, not read back.
    index = streamed[0] if streamed else _read_index(sidecar, digest)
    if index is None:
        with open_layer(path, max_uncompressed=max_uncompressed, layer=digest) as stream:
            index = index_layer(stream, layer=digest, policy=policy)
        _write_index(sidecar, index)
    return PreparedLayer(path, index, downloaded, bool(streamed))


class _Abandoned(Exception):
    """Tells the indexer thread to stop: its input will not be complete."""


_END = object()
_ABANDON = object()


class IndexingTee:
    """A writable, seekable file for `fetch_blob`: every write also feeds the indexer.

    A rewind (a download restarted from byte 0) abandons the streamed index; the
    caller then indexes the finished file instead. The indexer only ever sees bytes
    that are later verified as a whole: its result is used only after the download
    was checked.
    """

    def __init__(self, out: BinaryIO, *, layer: str, policy: MemberPolicy,
                 max_uncompressed: int) -> None:
        self._out = out
        self._layer = layer
        self._policy = policy
        self._cap = max_uncompressed
        self._queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._stopped = threading.Event()
        self._abandoned = False
        self._result: LayerIndex | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"index-{layer[7:19]}",
                                        daemon=True)
        self._thread.start()

    # -- the file side ----------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> int:
        written = self._out.write(data)
        if not self._abandoned:
            self._feed(bytes(data))
        return written

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._out.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        before = self._out.tell()
        position = self._out.seek(offset, whence)
        if position != before:
            self.abandon()
        return position

    def truncate(self, size: int | None = None) -> int:
        return self._out.truncate(size)

    def flush(self) -> None:
        self._out.flush()

    def fileno(self) -> int:
        return self._out.fileno()

    # -- the indexer side -------------------------------------------------------

    def finish(self) -> LayerIndex | None:
        """The streamed index after a verified download; None when it must be redone."""
        if not self._abandoned:
            self._feed(_END)
        self._thread.join(_JOIN_TIMEOUT)
        if self._abandoned or self._thread.is_alive():
            return None
        if self._error is not None:
            # A refusal is re-derived from the whole file, which gives the same verdict
            # with the file's full checks (zstd framing) and an exact message.
            log.debug("indexing %s while downloading failed: %s", self._layer, self._error)
            return None
        return self._result

    def abandon(self) -> None:
        """Stops the indexer (the input restarts, or the download failed)."""
        if self._abandoned:
            return
        self._abandoned = True
        self._feed(_ABANDON)
        self._thread.join(_JOIN_TIMEOUT)

    def _feed(self, item: object) -> None:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        reader = _QueueReader(self._queue)
        try:
            with contextlib.closing(open_layer_stream(
                    reader, max_uncompressed=self._cap, layer=self._layer)) as stream:
                self._result = index_layer(stream, layer=self._layer, policy=self._policy)
        except _Abandoned:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to finish()
            self._error = exc
        finally:
            self._stopped.set()
            _drain(self._queue)


class _QueueReader:
    """A read() over the chunks put into a queue; _END is the end of the stream."""

    def __init__(self, chunks: queue.Queue[object]) -> None:
        self._chunks = chunks
        self._buffer = memoryview(b"")
        self._ended = False

    def read(self, size: int = -1) -> bytes:
        if not self._buffer and not self._ended:
            item = self._chunks.get()
            if item is _ABANDON:
                raise _Abandoned
            if item is _END:
                self._ended = True
            else:
                assert isinstance(item, bytes)
                self._buffer = memoryview(item)
        if size < 0 or size >= len(self._buffer):
            data, self._buffer = bytes(self._buffer), memoryview(b"")
            return data
        data, self._buffer = bytes(self._buffer[:size]), self._buffer[size:]
        return data

    def close(self) -> None:
        """The queue is drained by its owner."""


def _drain(chunks: queue.Queue[object]) -> None:
    with contextlib.suppress(queue.Empty):
        while True:
            chunks.get_nowait()


def _read_index(path: Path, digest: str) -> LayerIndex | None:
    try:
        data = json.loads(path.read_bytes())
        index = LayerIndex.from_json(data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("cached index %s is unreadable (%s); indexing the layer again", path, exc)
        return None
    if index.layer != digest:
        log.warning("cached index %s belongs to %s; indexing the layer again", path, index.layer)
        return None
    return index


def _write_index(path: Path, index: LayerIndex) -> None:
    """Writes the sidecar atomically (a torn file reads as missing and is redone)."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(index.to_json(), separators=(",", ":")))
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
