"""A zstd layer cut anywhere is refused while it streams, never read as a shorter layer."""

import io

import pytest
import zstandard

from imagegw.domain.errors import ContentRejected
from imagegw.pipeline.decompress import open_layer_stream
from tests.support import layers as L

TAR = L.tar_bytes(L.file("a", b"x" * 300_000), L.file("b", b"y" * 10))


def frames() -> bytes:
    compressor = zstandard.ZstdCompressor(level=1, write_checksum=True)
    skippable = (0x184D2A50).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"pad"
    return compressor.compress(TAR[:1024]) + skippable + compressor.compress(TAR[1024:])


def read_all(blob: bytes) -> bytes:
    stream = open_layer_stream(io.BytesIO(blob), max_uncompressed=10**9, layer="sha256:test")
    return b"".join(iter(lambda: stream.read(65536), b""))


def test_multi_frame_zstd_with_skippable_frame_streams_whole():
    assert read_all(frames()) == TAR


@pytest.mark.parametrize("cut", [5, 13, 200, -40, -4, -1])
def test_truncated_zstd_is_refused_while_streaming(cut):
    blob = frames()
    with pytest.raises(ContentRejected, match="zstd"):
        read_all(blob[:cut])


def test_garbage_after_the_last_frame_is_refused():
    with pytest.raises(ContentRejected, match="after its last zstd frame|not a zstd frame"):
        read_all(frames() + b"junk")
