"""The compact layer index holds exactly what a LayerIndex holds."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest

from imagegw.pipeline.compact import (
    decode,
    encode,
    encode_entry,
    encode_header,
    paths,
    scan_layer_python,
)
from imagegw.pipeline.flatten import index_layer
from imagegw.pipeline.members import MemberPolicy
from tests.support.layers import (
    device,
    dir,
    file,
    hardlink,
    opaque,
    symlink,
    tar_bytes,
    whiteout,
)

POLICY = MemberPolicy()


def sample_layer() -> bytes:
    return tar_bytes(
        dir("etc", 0o750, mtime=7),
        file("etc/passwd", b"root:x:0:0\n", 0o644, mtime=1_700_000_000),
        hardlink("etc/passwd.bak", "etc/passwd"),
        symlink("etc/motd", "/run/motd\udcff"),
        whiteout("usr/lib/old"),
        opaque("var/cache"),
        device("dev/null"),
        file("caf\u00e9/" + "x" * 150, b"long and not ascii"),
    )


def test_round_trip_keeps_every_entry_marker_and_count() -> None:
    index = index_layer(io.BytesIO(sample_layer()), layer="sha256:ab", policy=POLICY)
    assert len(index.entries) == 5 and len(index.markers) == 2 and index.dropped == 1
    assert decode(encode(index)) == index


def test_the_reference_scanner_is_the_encoded_index() -> None:
    data = sample_layer()
    expected = index_layer(io.BytesIO(data), layer="l", policy=POLICY)
    assert decode(scan_layer_python(io.BytesIO(data), layer="l", policy=POLICY)) == expected


@pytest.mark.parametrize("damage", [lambda b: b[:-1], lambda b: b + b"\0",
                                    lambda b: b"NOTANIDX" + b[8:], lambda b: b[:20]])
def test_damaged_index_is_refused(damage: Callable[[bytes], bytes]) -> None:
    data = encode(index_layer(io.BytesIO(sample_layer()), layer="l", policy=POLICY))
    with pytest.raises(ValueError):
        decode(damage(data))


def test_an_entry_with_a_damaged_number_is_refused() -> None:
    good = encode_entry(0, 0o644, 1_700_000_000, 3, 0, 512, b"a", b"")
    head, numbers = good[:6], good[6:]
    assert numbers == b"\xa4\x03" + b"\x80\xc4\x9f\xd5\x0c" + b"\x03\x00\x81\x04"
    for entry in (good[:-1], head + b"\x80" * 11 + numbers[2:],
                  head + b"\xff" * 9 + b"\x02" + numbers[2:], good[:-1] + b"\x84"):
        with pytest.raises(ValueError, match="a number"):
            decode(encode_header(b"l", 1, 0, 0) + entry)
    assert decode(encode_header(b"l", 1, 0, 0) + good).entries[0].mtime == 1_700_000_000


def test_paths_are_decodes_kinds_and_paths() -> None:
    data = encode(index_layer(io.BytesIO(sample_layer()), layer="l", policy=POLICY))
    index = decode(data)
    assert paths(data) == ([(entry.kind, entry.path) for entry in index.entries],
                           index.markers)
    for damaged in (data[:40], data[:-1]):
        with pytest.raises(ValueError):
            paths(damaged)


def test_each_file_entry_knows_where_its_data_starts() -> None:
    data = sample_layer()
    index = decode(scan_layer_python(io.BytesIO(data), layer="l", policy=POLICY))
    files = [entry for entry in index.entries if entry.kind == "file"]
    assert [data[entry.offset:entry.offset + entry.size] for entry in files] == [
        b"root:x:0:0\n", b"long and not ascii"]
