"""A layer read ahead in its own thread (pipeline/prefetch.py) gives the flatten exactly
what reading it inline gives, in order, errors included, and stops when told."""

from __future__ import annotations

import io
import threading

import pytest

from imagegw.domain.errors import ContentRejected
from imagegw.pipeline.members import Admitted, MemberPolicy
from imagegw.pipeline.prefetch import DataNotKept, LayerAhead, LayerInline
from tests.support.layers import dir, file, raw_member, symlink, tar_bytes, whiteout

POLICY = MemberPolicy()
LAYER = tar_bytes(
    dir("etc"), file("etc/small", b"s" * 100), file("etc/big", b"B" * 5000),
    symlink("etc/link", "small"), whiteout("etc/gone"), file("etc/last", b"L" * 300),
)


class Stream(io.BytesIO):
    closed_by: list[str]

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.closed_by = []

    def close(self) -> None:
        self.closed_by.append(threading.current_thread().name)
        super().close()


def contents(source) -> list[tuple[str, object, bytes | None]]:
    """(name, what admit made of it, its data) for every member, in order."""
    seen = []
    for member, result, data in source:
        copied = None
        if isinstance(result, Admitted) and result.size:
            out = io.BytesIO()
            source.copy(member, data, out, None)
            copied = out.getvalue()
        seen.append((member.name, result, copied))
    return seen


def ahead(stream: io.BytesIO, *, limit: int | None = None, hidden=lambda path: False):
    return LayerAhead(lambda: stream, "layer", POLICY, hidden, limit=limit).start()


@pytest.mark.parametrize("limit", [None, 1000, 1], ids=["all-ahead", "held-back", "handed-over"])
def test_a_layer_read_ahead_gives_what_reading_it_inline_gives(limit) -> None:
    expected = contents(LayerInline(io.BytesIO(LAYER), "layer", POLICY))
    stream = Stream(LAYER)
    source = ahead(stream, limit=limit)
    assert contents(source) == expected
    source.close()
    assert stream.closed_by, "the layer was not closed"


def test_members_hidden_by_newer_layers_are_skipped_not_kept() -> None:
    source = ahead(Stream(LAYER), hidden=lambda path: path == "etc/big")
    seen = {}
    for member, result, data in source:
        if member.name == "etc/big":
            with pytest.raises(DataNotKept):
                source.copy(member, data, io.BytesIO(), None)
        elif isinstance(result, Admitted) and result.size:
            out = io.BytesIO()
            source.copy(member, data, out, None)
            seen[member.name] = out.getvalue()
    assert seen == {"etc/small": b"s" * 100, "etc/last": b"L" * 300}


def test_a_refused_member_is_raised_where_it_stands_in_the_layer() -> None:
    layer = tar_bytes(file("a", b"1"), file("b", b"2"), raw_member("c/../../x", data=b"3"),
                      file("d", b"4"))
    source = ahead(Stream(layer))
    names = []
    with pytest.raises(ContentRejected, match=r"c/\.\./\.\./x"):
        for member, _, _ in source:
            names.append(member.name)
    assert names == ["a", "b"]


def test_a_layer_that_cannot_be_opened_fails_the_flatten() -> None:
    def refuse() -> io.BytesIO:
        raise OSError("the download failed")

    source = LayerAhead(refuse, "layer", POLICY, lambda path: False).start()
    with pytest.raises(OSError, match="the download failed"):
        list(source)


def test_closing_stops_the_reader_and_closes_the_layer() -> None:
    # The flatten failed on the layer before: the layer still being downloaded is
    # closed as soon as it opens, and nothing is read from it.
    opened = threading.Event()
    stream = Stream(LAYER)
    reads: list[int] = []
    original_read = stream.read

    def counted_read(size: int | None = -1) -> bytes:
        reads.append(size or 0)
        return original_read(size)

    stream.read = counted_read  # type: ignore[method-assign]

    def open_later() -> io.BytesIO:
        opened.wait(timeout=10)
        return stream

    source = LayerAhead(open_later, "layer", POLICY, lambda path: False).start()
    source.close()
    opened.set()
    source._thread.join(timeout=10)  # noqa: SLF001
    assert not source._thread.is_alive()  # noqa: SLF001
    assert stream.closed_by and reads == []


def test_a_layer_handed_over_is_closed_by_the_flatten() -> None:
    stream = Stream(LAYER)
    source = ahead(stream, limit=150)  # etc/small fits, etc/big does not
    for member, _, _ in source:
        if member.name == "etc/big":
            break
    source.close()
    assert stream.closed_by == [threading.current_thread().name]


def test_a_layer_handed_over_but_never_reached_is_closed_by_the_flatten() -> None:
    # The flatten failed on the layer before: it closes what it was handed.
    stream = Stream(LAYER)
    source = ahead(stream, limit=150)
    source._thread.join(timeout=10)  # noqa: SLF001 - the thread ends at the hand-over
    assert not stream.closed_by
    source.close()
    assert stream.closed_by == [threading.current_thread().name]
