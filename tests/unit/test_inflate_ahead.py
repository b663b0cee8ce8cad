"""Layers decompressed ahead of the compiled one pass (pipeline/inflate_ahead.py): exactly
the layer stream's bytes and errors, in order; bounded; stopped when the pass ends."""

from __future__ import annotations

import gzip
import io
import os
import random
import tempfile
import threading
import time
from pathlib import Path

import pytest

from imagegw.domain.config import ConverterOptions, Limits
from imagegw.domain.errors import ContentRejected, DigestMismatch
from imagegw.pipeline import compact, inflate_ahead
from imagegw.pipeline.decompress import open_layer_stream
from imagegw.pipeline.flatten import index_layer
from imagegw.pipeline.inflate_ahead import HiddenPaths, InflateAhead, LayersAhead
from imagegw.pipeline.layer import FileLayer
from imagegw.pipeline.members import MemberPolicy
from imagegw.pipeline.squashfs import flatten_to_squashfs
from imagegw.registry.following import GrowingBlob
from tests.support.compiled_flatten import one_pass_outcome
from tests.support.hostile_corpus import cases
from tests.support.layers import (
    digest,
    dir,
    file,
    hardlink,
    opaque,
    overlapping_layers,
    raw_member,
    symlink,
    tar_bytes,
    whiteout,
    write_blob,
)
from tests.support.squashfs_tree import read_squashfs, sha256

try:
    from imagegw.pipeline import native_onepass
except ImportError:  # not built: the tests over it skip (test_native_onepass.py fails in CI)
    native_onepass = None  # type: ignore[assignment]

#: Half incompressible, half repetitive: ~3 MiB decompressed, in many gzip blocks.
PAYLOAD = b"".join(os.urandom(4096) + bytes([number % 251]) * 4096 for number in range(384))
LIMIT = 256 << 10
READ_SIZE = 64 << 10
POLICY = MemberPolicy()


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


# -- data newer layers hide: handed out as zeros, never held ---------------------------


def test_hidden_paths_are_what_the_one_pass_hides() -> None:
    newer = compact.encode(index_layer(io.BytesIO(tar_bytes(
        dir("keep"), file("replaced", b"new"), symlink("link", "keep"), whiteout("gone"),
        opaque("cleared"), file("cleared/new", b"n"))), layer="newer", policy=POLICY))
    hides = HiddenPaths([newer]).hides
    assert hides("replaced") and hides("gone") and hides("gone/below")
    assert hides("link/x") and hides("cleared/old") and hides("cleared/new")
    assert hides("keep")  # the older entry of the path (a directory entry) is hidden
    assert not hides("keep/old") and not hides("cleared") and not hides("other")
    everything = compact.encode(index_layer(io.BytesIO(tar_bytes(opaque(""))),
                                            layer="root", policy=POLICY))
    assert HiddenPaths([everything]).hides("any/path")


BIG_HIDDEN, BIG_SHOWN = os.urandom(300_000), os.urandom(200_000)


def test_hidden_file_data_is_zeros_and_everything_else_the_layers_bytes() -> None:
    older = tar_bytes(dir("a"), file("a/hidden", BIG_HIDDEN), file("a/shown", BIG_SHOWN),
                      file("a/small-hidden", b"s" * 100), file("./a/hidden2", BIG_HIDDEN))
    hidden = {"a/hidden", "a/small-hidden", "a/hidden2"}
    stream = InflateAhead(opener(io.BytesIO(gzip.compress(older, 1))), name="older",
                          limit=LIMIT, read_size=READ_SIZE,
                          hides=lambda: hidden.__contains__).start()
    got = read_all(stream, [1 << 20, 7000])
    expected = older.replace(BIG_HIDDEN, bytes(len(BIG_HIDDEN)))
    assert got == expected and stream.zeroed == 2 * len(BIG_HIDDEN)
    assert stream.peak <= LIMIT


def test_after_an_extension_header_nothing_more_is_zeroed() -> None:
    # A PAX header (a name too long for ustar) may change what follows: the rest of the
    # layer goes out as it is.
    older = tar_bytes(file("h1", BIG_HIDDEN), file("d/" + "x" * 120, b"long"),
                      file("h2", BIG_SHOWN))
    stream = InflateAhead(opener(io.BytesIO(older)), name="older", limit=LIMIT,
                          read_size=READ_SIZE, hides=lambda: (lambda path: True)).start()
    got = read_all(stream, [1 << 20])
    assert got == older.replace(BIG_HIDDEN, bytes(len(BIG_HIDDEN)))
    assert stream.zeroed == len(BIG_HIDDEN)


class _Counted(LayersAhead):
    """LayersAhead that keeps every stream it started (to count what was zeroed)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.streams: list[InflateAhead] = []

    def _start(self, number: int) -> InflateAhead:
        stream = super()._start(number)
        self.streams.append(stream)
        return stream


def ahead_outcome(layers: list[bytes]) -> tuple[tuple, int]:
    """one_pass_outcome(compiled=True) with every layer read through LayersAhead."""
    names = [f"layer{number}" for number in range(len(layers))]
    with tempfile.TemporaryFile() as out, _Counted(
            lambda number: open_layer_stream(io.BytesIO(layers[number]),
                                             max_uncompressed=1 << 40, layer=names[number]),
            reversed(range(len(layers))), limit=LIMIT) as ahead_layers:
        try:
            try:
                native_onepass.stream_flat_tar(
                    names, ahead_layers.open, out, policy=POLICY, max_data_bytes=1 << 40,
                    on_layer_index=ahead_layers.layer_read).verify()
            except native_onepass.SpeculationFailed as failed:
                outcome: tuple = ("fallback", failed.reason)
            else:
                out.seek(0)
                outcome = ("tree", out.read())
        except ContentRejected as refused:
            outcome = ("refused", refused.message, refused.hint)
        return outcome, sum(stream.zeroed for stream in ahead_layers.streams)


@pytest.fixture
def zero_everything_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    if native_onepass is None:
        pytest.skip("the compiled one pass is not built (scripts/setup)")
    monkeypatch.setattr(inflate_ahead, "ZERO_MIN", 1)


def test_the_compiled_one_pass_over_zeroed_data_writes_the_same_bytes_and_verdicts(
        zero_everything_hidden: None) -> None:
    from tests.unit.test_streaming_flatten import random_stack

    rng = random.Random(20261207)
    zeroed = 0
    outcomes = {"tree": 0, "fallback": 0, "refused": 0}
    for _ in range(300):
        layers = random_stack(rng)
        expected = one_pass_outcome(layers, compiled=True)
        got, count = ahead_outcome(layers)
        assert got == expected
        outcomes[got[0]] += 1
        zeroed += count
    layers = overlapping_layers(120, seed=120)
    got, count = ahead_outcome(layers)
    assert got == one_pass_outcome(layers, compiled=True)
    assert zeroed > 0 and count > 0, "nothing was hidden: the test checks nothing"
    assert min(outcomes.values()) > 20, outcomes


def test_the_hostile_corpus_over_zeroed_data_gets_the_same_verdicts(
        zero_everything_hidden: None) -> None:
    from tests.unit.test_native_flat import read_all as decompressed

    checked = 0
    for case in cases():
        if not case.layers:
            continue
        try:
            layers = [decompressed(blob) for blob in case.layers]
        except ContentRejected:
            continue
        assert ahead_outcome(layers)[0] == one_pass_outcome(layers, compiled=True)
        checked += 1
    assert checked > 20


def test_a_hardlink_to_data_zeroed_ahead_gets_the_real_data_from_the_fallback(
        tmp_path: Path) -> None:
    # The newest layer whites out the target that an older layer's hardlink names: the
    # oldest layer is read ahead with the target's data as zeros (hidden), the one pass
    # cannot vouch for the link, and the two-pass flatten copies the real bytes.
    blobs = [gzip.compress(tar_bytes(file("big", BIG_HIDDEN)), 1),
             gzip.compress(tar_bytes(hardlink("copy", "big")), 1),
             gzip.compress(tar_bytes(whiteout("big"), file("pad", b"p")), 1)]
    layers = [FileLayer.of(write_blob(tmp_path, blob), digest(blob)) for blob in blobs]
    output = tmp_path / "image.squashfs"
    stats = flatten_to_squashfs(layers, output, options=ConverterOptions(jobs=2),
                                limits=Limits())
    tree = read_squashfs(output)
    assert "big" not in tree and tree["copy"].sha256 == sha256(BIG_HIDDEN)
    assert not stats.one_pass


def test_a_layer_hidden_whole_is_zeroed_and_the_image_is_exact(tmp_path: Path) -> None:
    blobs = [gzip.compress(tar_bytes(dir("data"), file("data/kept", BIG_SHOWN)), 1),
             gzip.compress(tar_bytes(dir("data/old"), file("data/old/a", BIG_HIDDEN),
                                     file("data/old/b", BIG_HIDDEN)), 1),
             gzip.compress(tar_bytes(file("data/mid", BIG_SHOWN)), 1),
             gzip.compress(tar_bytes(dir("data/old"), opaque("data/old"),
                                     file("data/old/readme", b"r")), 1)]
    layers = [FileLayer.of(write_blob(tmp_path, blob), digest(blob)) for blob in blobs]
    streams: list[InflateAhead] = []
    original = LayersAhead._start

    def counted(self, number):
        stream = original(self, number)
        streams.append(stream)
        return stream

    output = tmp_path / "image.squashfs"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LayersAhead, "_start", counted)
        stats = flatten_to_squashfs(layers, output, options=ConverterOptions(jobs=2),
                                    limits=Limits())
    assert stats.one_pass
    assert sum(stream.zeroed for stream in streams) == 2 * len(BIG_HIDDEN)
    tree = read_squashfs(output)
    assert tree["data/kept"].sha256 == tree["data/mid"].sha256 == sha256(BIG_SHOWN)
    assert tree["data/old/readme"].sha256 == sha256(b"r") and "data/old/a" not in tree


def test_a_pass_refused_mid_layer_leaves_no_read_ahead_running(tmp_path: Path) -> None:
    # The newest layer is refused after some of its data went out; the older layers were
    # being read ahead (more than they may hold): their threads end, and the error is the
    # one the pass gives.
    hostile = gzip.compress(tar_bytes(file("x", BIG_SHOWN), raw_member("../escape", data=b"x")), 1)
    older = [gzip.compress(tar_bytes(file(f"o{number}", PAYLOAD * 3)), 1) for number in range(2)]
    blobs = [*older, hostile]
    layers = [FileLayer.of(write_blob(tmp_path, blob), digest(blob)) for blob in blobs]
    with pytest.raises(ContentRejected, match="'..'"):
        flatten_to_squashfs(layers, tmp_path / "image.squashfs",
                            options=ConverterOptions(jobs=2), limits=Limits())
    wait_for(lambda: not [thread for thread in threading.enumerate()
                          if thread.name.startswith("inflate-")])
    assert not (tmp_path / "image.squashfs").exists()


def test_data_zeroed_ahead_that_the_one_pass_wrote_costs_a_second_pass_never_the_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The read-ahead's hiding rules are a copy of onepass.c's. Were they to hide a file the
    # one pass shows, the pass would write zeros for it: the exact tree's check catches
    # that, and the two-pass flatten (which reads every layer afresh) makes the image.
    if native_onepass is None:
        pytest.skip("the compiled one pass is not built (scripts/setup)")
    monkeypatch.setattr(HiddenPaths, "hides", lambda self, path: True)
    blobs = [gzip.compress(tar_bytes(file("kept", BIG_SHOWN)), 1),
             gzip.compress(tar_bytes(file("mid", b"m")), 1),
             gzip.compress(tar_bytes(file("new", b"n")), 1)]
    layers = [FileLayer.of(write_blob(tmp_path, blob), digest(blob)) for blob in blobs]
    zeroed: list[dict[int, list[int]]] = []
    original = LayersAhead.zeroed

    def seen(self):
        zeroed.append(original(self))
        return zeroed[-1]

    monkeypatch.setattr(LayersAhead, "zeroed", seen)
    output = tmp_path / "image.squashfs"
    stats = flatten_to_squashfs(layers, output, options=ConverterOptions(jobs=2),
                                limits=Limits())
    assert zeroed == [{0: [512]}], "the read-ahead zeroed nothing: the test checks nothing"
    assert not stats.one_pass
    tree = read_squashfs(output)
    assert tree["kept"].sha256 == sha256(BIG_SHOWN)
    assert tree["mid"].sha256 == sha256(b"m") and tree["new"].sha256 == sha256(b"n")


# -- file data lent to the compiled one pass (InflateAhead.borrow) ----------------------

#: native/tarout.h's OUT_DIRECT: the compiled one pass borrows the rest of a file's data
#: that its read buffer does not hold, when at least this much is left.
LENT_FROM = 64 << 10


def test_borrowed_and_read_bytes_are_the_layer_streams_bytes_in_order() -> None:
    stream = ahead(Tracked(gzip.compress(PAYLOAD, 6)))
    out = bytearray()
    rng = random.Random(7)
    while True:
        if rng.random() < 0.5:
            lent = stream.borrow(rng.choice([1, 4096, 100_000, 1 << 22]))
            if not lent:
                break
            out += lent
        else:
            buffer = bytearray(rng.choice([512, 70_000]))
            count = stream.readinto(buffer)
            if not count:
                break
            out += buffer[:count]
    assert out == PAYLOAD
    assert stream.held == 0 and not stream.borrow(10)


def test_hidden_data_is_lent_as_zeros() -> None:
    older = tar_bytes(file("hidden", BIG_HIDDEN), file("shown", BIG_SHOWN))
    stream = InflateAhead(opener(io.BytesIO(older)), name="older", limit=LIMIT,
                          read_size=READ_SIZE, hides=lambda: {"hidden"}.__contains__).start()
    out = bytearray()
    while lent := stream.borrow(1 << 20):
        out += lent
    assert out == older.replace(BIG_HIDDEN, bytes(len(BIG_HIDDEN)))


def _lent_bytes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    lent: list[int] = []
    original = InflateAhead.borrow

    def counting(self, size):
        view = original(self, size)
        lent.append(len(view))
        return view

    monkeypatch.setattr(InflateAhead, "borrow", counting)
    return lent


def _big(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_file_data_lent_ahead_makes_the_same_tar_as_the_plain_compiled_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    if native_onepass is None:
        pytest.skip("the compiled one pass is not built (scripts/setup)")
    sizes = [LENT_FROM - 1, LENT_FROM, LENT_FROM + 1, 200_001, (1 << 20) + 3, 3 << 20]
    layers = [
        tar_bytes(dir("a"), *(file(f"a/f{size}", _big(size, size)) for size in sizes),
                  file("a/replaced", _big(1, 500_000)), file("a/gone", _big(2, 700_000))),
        tar_bytes(file("a/replaced", _big(3, 300_000)), whiteout("a/gone"),
                  file("small", b"s"), file("b/new", _big(4, 2 << 20))),
    ]
    lent = _lent_bytes(monkeypatch)
    got, _ = ahead_outcome(layers)
    assert got[0] == "tree" and got == one_pass_outcome(layers, compiled=True)
    assert sum(lent) > 2 << 20, "hardly any data was lent: the test checks nothing"


def test_a_layer_cut_inside_lent_data_gets_the_plain_passs_refusal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    if native_onepass is None:
        pytest.skip("the compiled one pass is not built (scripts/setup)")
    whole = tar_bytes(file("head", b"h"), file("big", _big(5, 8 << 20)))
    layers = [tar_bytes(file("old", b"o")), whole[:len(whole) // 2]]
    lent = _lent_bytes(monkeypatch)
    got, _ = ahead_outcome(layers)
    assert got[0] == "refused" and got == one_pass_outcome(layers, compiled=True)
    assert sum(lent) > LENT_FROM


def test_a_corrupt_gzip_stream_inside_lent_data_is_refused_in_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    if native_onepass is None:
        pytest.skip("the compiled one pass is not built (scripts/setup)")
    blob = bytearray(gzip.compress(tar_bytes(file("big", _big(6, 3 << 20))), 6))
    blob[len(blob) // 2:len(blob) // 2 + 64] = bytes(64)  # inside the file's data
    lent = _lent_bytes(monkeypatch)
    with tempfile.TemporaryFile() as out, LayersAhead(
            lambda number: open_layer_stream(io.BytesIO(bytes(blob)), max_uncompressed=1 << 40,
                                             layer="sha256:corrupt"),
            [0], limit=LIMIT) as layers, pytest.raises(ContentRejected, match="not valid gzip"):
        native_onepass.stream_flat_tar(["layer0"], layers.open, out, policy=POLICY,
                                       max_data_bytes=1 << 40)
    assert sum(lent) > LENT_FROM


class _Overlending(io.BytesIO):
    """A layer stream that lends more than it is asked for."""

    def borrow(self, size: int) -> bytes:
        return self.read(size + 1)


def test_a_stream_lending_more_than_asked_is_an_error_not_bytes_out_of_place() -> None:
    if native_onepass is None:
        pytest.skip("the compiled one pass is not built (scripts/setup)")
    layer = tar_bytes(file("big", _big(7, 4 << 20)), file("next", b"n"))
    with tempfile.TemporaryFile() as out, pytest.raises(OSError, match="lent"):
        native_onepass.stream_flat_tar(["layer0"], lambda number: _Overlending(layer), out,
                                       policy=POLICY, max_data_bytes=1 << 40)
