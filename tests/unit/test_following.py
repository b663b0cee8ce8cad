"""GrowingBlob (worker/following.py): a layer blob read while it downloads.

A writer here does what the download does (write, then report; a restart truncates,
then reports minus what it had written); the readers run in threads of their own.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from imagegw.domain.errors import DigestMismatch
from imagegw.registry.following import DownloadRestarted, GrowingBlob

BLOB = bytes(range(256)) * 4096  # 1 MiB


class Download:
    """Writes a blob into a temporary file the way the layer cache's download does."""

    def __init__(self, directory: Path, blob: GrowingBlob) -> None:
        self.temp = directory / ".partial"
        self.out = open(self.temp, "w+b", buffering=0)  # noqa: SIM115 - closed by finish
        self.blob = blob
        blob.attach(self.out)

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.blob.wrote(len(data))

    def restart(self) -> None:
        written = self.out.tell()
        self.out.seek(0)
        self.out.truncate()
        self.blob.wrote(-written)

    def finish(self) -> Path:
        self.out.close()
        final = self.temp.with_name("blob")
        os.replace(self.temp, final)
        self.blob.finished(final)
        return final


class Reader:
    """Reads a GrowingBlob to its end (or its error) in a thread."""

    def __init__(self, blob: GrowingBlob, chunk: int = 64 * 1024) -> None:
        self.parts: list[bytes] = []
        self.error: BaseException | None = None
        self.ended = threading.Event()
        self._stream = blob.open()
        self._chunk = chunk
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while data := self._stream.read(self._chunk):
                self.parts.append(data)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            self.error = exc
        finally:
            self._stream.close()
            self.ended.set()

    @property
    def received(self) -> int:
        return sum(len(part) for part in self.parts)

    def wait(self) -> None:
        assert self.ended.wait(30), "the reader never ended"


def wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def reading(directory: Path, written: int) -> tuple[GrowingBlob, Download, Reader]:
    """A download that has written `written` bytes, and a reader that has them."""
    blob = GrowingBlob("sha256:test", len(BLOB))
    download = Download(directory, blob)
    reader = Reader(blob)
    download.write(BLOB[:written])
    wait_for(lambda: reader.received == written)
    return blob, download, reader


def test_readers_get_the_bytes_as_written_and_the_end_only_once_verified(tmp_path):
    blob = GrowingBlob("sha256:test", len(BLOB))
    download = Download(tmp_path, blob)
    readers = [Reader(blob), Reader(blob, chunk=1000)]
    for start in range(0, len(BLOB), 100_000):
        download.write(BLOB[start:start + 100_000])
    for reader in readers:
        wait_for(lambda reader=reader: reader.received == len(BLOB))
    assert not any(reader.ended.is_set() for reader in readers), \
        "a reader saw the end of a blob not verified yet"
    assert blob.read_early and blob.complete and not blob.done
    download.finish()
    for reader in readers:
        reader.wait()
        assert reader.error is None
        assert b"".join(reader.parts) == BLOB
    assert download.out.closed


def test_a_failed_download_reaches_its_readers_as_its_error(tmp_path):
    blob, _, reader = reading(tmp_path, len(BLOB))
    blob.failed(DigestMismatch("blob sha256:test hashes to something else"))
    reader.wait()
    assert isinstance(reader.error, DigestMismatch)
    assert blob.done


def test_a_download_failing_half_way_fails_a_waiting_reader(tmp_path):
    blob, _, reader = reading(tmp_path, 1000)
    blob.failed(ConnectionResetError("the registry went away"))
    reader.wait()
    assert isinstance(reader.error, ConnectionResetError)
    assert not blob.complete


def test_a_restart_after_bytes_were_read_fails_the_reader(tmp_path):
    _, download, reader = reading(tmp_path, 300_000)
    download.restart()
    download.write(BLOB)
    reader.wait()
    assert isinstance(reader.error, DownloadRestarted)
    assert "started over" in str(reader.error)


def test_a_restart_before_anything_was_read_is_followed(tmp_path):
    blob = GrowingBlob("sha256:test", len(BLOB))
    download = Download(tmp_path, blob)
    stream = blob.open()
    download.write(b"\xff" * 5000)  # an attempt that goes wrong before the reader starts
    download.restart()
    download.write(BLOB)
    download.finish()
    data = b"".join(iter(lambda: stream.read(70_000), b""))
    stream.close()
    assert data == BLOB


def test_a_cached_blob_is_read_from_the_cache(tmp_path):
    cached = tmp_path / "cached"
    cached.write_bytes(BLOB)
    blob = GrowingBlob("sha256:test", len(BLOB))
    reader = Reader(blob)  # opened before the cache answered
    blob.finished(cached)
    reader.wait()
    assert reader.error is None and b"".join(reader.parts) == BLOB
    assert not blob.read_early, "verified bytes are not early"
    late = blob.open()
    assert late.read() == BLOB
    late.close()


def test_a_cached_blob_shorter_than_its_size_is_an_error(tmp_path):
    cached = tmp_path / "cached"
    cached.write_bytes(BLOB[:1000])
    blob = GrowingBlob("sha256:test", len(BLOB))
    blob.finished(cached)
    stream = blob.open()
    assert stream.read(1000) == BLOB[:1000]
    with pytest.raises(OSError, match="shorter"):
        stream.read(1000)
    stream.close()


def test_a_reader_closed_early_releases_its_descriptor(tmp_path):
    blob = GrowingBlob("sha256:test", len(BLOB))
    download = Download(tmp_path, blob)
    download.write(BLOB[:5000])
    before = len(os.listdir("/proc/self/fd"))
    stream = blob.open()
    assert stream.read(100) == BLOB[:100]
    assert len(os.listdir("/proc/self/fd")) == before + 1
    stream.close()
    assert len(os.listdir("/proc/self/fd")) == before
    with pytest.raises(ValueError, match="closed"):
        stream.read(1)
    download.finish()
