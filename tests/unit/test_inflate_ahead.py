"""Layers decompressed ahead of the compiled one pass (pipeline/inflate_ahead.py): exactly
the layer stream's bytes and errors, in order; bounded; stopped when the pass ends."""

from __future__ import annotations

import gzip
import io
import os
import random
import threading
import time
from pathlib import Path

import pytest

from imagegw.domain.errors import ContentRejected, DigestMismatch
from imagegw.pipeline.decompress import open_layer_stream
from imagegw.pipeline.inflate_ahead import InflateAhead, LayersAhead
from imagegw.registry.following import GrowingBlob

#: Half incompressible, half repetitive: ~3 MiB decompressed, in many gzip blocks.
PAYLOAD = b"".join(os.urandom(4096) + bytes([number % 251]) * 4096 for number in range(384))
LIMIT = 256 << 10
READ_SIZE = 64 << 10


def wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Tracked(io.BytesIO):
    """A compressed blob that says when it is closed."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.was_closed = threading.Event()

    def close(self) -> None:
        self.was_closed.set()
        super().close()


def opener(blob: io.RawIOBase | io.BytesIO, *, cap: int = 1 << 40):
    return lambda: open_layer_stream(blob, max_uncompressed=cap, layer="sha256:layer")


def ahead(blob, *, cap: int = 1 << 40, limit: int = LIMIT) -> InflateAhead:
    return InflateAhead(opener(blob, cap=cap), name="layer", limit=limit,
                        read_size=READ_SIZE).start()


def read_all(stream: InflateAhead, sizes: list[int]) -> bytes:
    out = bytearray()
    for size in iter(lambda: random.choice(sizes), None):
        buffer = bytearray(size)
        count = stream.readinto(buffer)
        if count == 0:
            return bytes(out)
        out += buffer[:count]
    raise AssertionError("unreachable")


@pytest.mark.parametrize("sizes", [[1 << 20], [1, 511, 512, 70_000, 1 << 20]],
                         ids=["scanner-sized", "ragged"])
def test_a_layer_read_ahead_gives_exactly_the_layer_streams_bytes(sizes) -> None:
    blob = Tracked(gzip.compress(PAYLOAD, 6))
    stream = ahead(blob)
    assert read_all(stream, sizes) == PAYLOAD
    assert stream.read(100) == b"" and stream.readinto(bytearray(10)) == 0
    stream.join(10)
    assert not stream.running and blob.was_closed.is_set()
    stream.close()


def test_a_slow_reader_never_makes_it_hold_more_than_its_limit() -> None:
    stream = ahead(io.BytesIO(gzip.compress(PAYLOAD, 6)))
    wait_for(lambda: stream.held + READ_SIZE > LIMIT)  # full: the thread waits for room
    time.sleep(0.05)
    assert stream.held <= LIMIT
    assert read_all(stream, [1000, 40_000]) == PAYLOAD
    assert 0 < stream.peak <= LIMIT
    assert stream.held == 0


def test_corrupt_gzip_is_refused_with_the_layer_streams_error_after_the_good_bytes() -> None:
    good = gzip.compress(PAYLOAD, 6)
    corrupt = good[:len(good) // 2] + bytes(64) + good[len(good) // 2 + 64:]
    direct = open_layer_stream(io.BytesIO(corrupt), max_uncompressed=1 << 40, layer="sha256:layer")
    before = bytearray()
    with pytest.raises(ContentRejected) as expected:
        while data := direct.read(READ_SIZE):
            before += data
    stream = ahead(io.BytesIO(corrupt))
    got = bytearray()
    with pytest.raises(ContentRejected) as raised:
        while data := stream.read(10_000):
            got += data
    assert str(raised.value) == str(expected.value)
    assert bytes(got) == bytes(before) and len(got) > 0


def test_the_decompressed_size_cap_is_the_same_refusal() -> None:
    stream = ahead(io.BytesIO(gzip.compress(PAYLOAD, 6)), cap=1 << 20)
    with pytest.raises(ContentRejected, match="decompresses beyond the 1048576-byte cap"):
        read_all(stream, [1 << 20])


def test_a_failed_download_reaches_the_reader_as_its_own_error(tmp_path: Path) -> None:
    data = gzip.compress(PAYLOAD, 6)
    blob = GrowingBlob("sha256:layer", len(data))
    with open(tmp_path / "partial", "w+b", buffering=0) as out:
        blob.attach(out)
        out.write(data[:len(data) // 3])
        blob.wrote(len(data) // 3)
        stream = ahead(blob.open())
        wait_for(lambda: stream.held > 0)
        failure = DigestMismatch("blob sha256:layer hashes to something else")
        blob.failed(failure)
        with pytest.raises(DigestMismatch) as raised:
            read_all(stream, [1 << 20])
        assert raised.value is failure
        stream.join(10)
        assert not stream.running


def test_closing_mid_layer_stops_its_thread_and_closes_the_blob() -> None:
    blob = Tracked(gzip.compress(PAYLOAD * 4, 6))
    stream = ahead(blob)
    assert len(stream.read(5000)) > 0
    wait_for(lambda: stream.held + READ_SIZE > LIMIT)  # the thread waits for room
    stream.close()
    stream.join(10)
    assert not stream.running and blob.was_closed.is_set()
    assert stream.held == 0
    with pytest.raises(ValueError, match="closed"):
        stream.read(10)


def test_closing_while_the_download_stalls_stops_the_thread_once_the_download_ends(
        tmp_path: Path) -> None:
    data = gzip.compress(PAYLOAD, 6)
    blob = GrowingBlob("sha256:layer", len(data))
    with open(tmp_path / "partial", "w+b", buffering=0) as out:
        blob.attach(out)
        stream = ahead(blob.open())  # waits in the download's read: no byte yet
        time.sleep(0.05)
        stream.close()
        assert stream.running
        blob.failed(RuntimeError("download of sha256:layer stopped: the conversion ended"))
        stream.join(10)
        assert not stream.running


def test_layers_open_in_order_each_starting_the_next() -> None:
    payloads = {number: PAYLOAD[number * 1000:] for number in range(4)}
    opened: list[int] = []
    blobs = {number: Tracked(gzip.compress(payload, 1)) for number, payload in payloads.items()}

    def open_layer(number: int):
        opened.append(number)
        return open_layer_stream(blobs[number], max_uncompressed=1 << 40, layer=str(number))

    with LayersAhead(open_layer, [3, 2, 1, 0], limit=LIMIT) as layers:
        newest = layers.open(3)
        wait_for(lambda: sorted(opened) == [2, 3])  # the next layer is read ahead at once
        assert newest.read() == payloads[3]
        newest.close()
        second = layers.open(2)
        assert second.read() == payloads[2]
        second.close()
        third = layers.open(1)
        wait_for(lambda: 0 in opened)
    # Leaving it closes the layer read ahead but never handed out (0), not the one
    # handed out (1: its reader closes it).
    wait_for(blobs[0].was_closed.is_set)
    assert not third.closed
    assert third.read() == payloads[1]
    third.close()
    with pytest.raises(ValueError, match="closed"):
        layers.open(0)
