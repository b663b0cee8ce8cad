"""The compact layer index holds exactly what a LayerIndex holds."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest

from imagegw.pipeline.compact import decode, encode, scan_layer_python
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


def test_each_file_entry_knows_where_its_data_starts() -> None:
    data = sample_layer()
    index = decode(scan_layer_python(io.BytesIO(data), layer="l", policy=POLICY))
    files = [entry for entry in index.entries if entry.kind == "file"]
    assert [data[entry.offset:entry.offset + entry.size] for entry in files] == [
        b"root:x:0:0\n", b"long and not ascii"]
