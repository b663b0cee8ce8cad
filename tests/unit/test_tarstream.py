"""The raw tar reader against tarfile-made archives, and the canonical writer."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from typing import BinaryIO, Literal

import pytest

from imagegw.domain.errors import ContentRejected
from imagegw.pipeline.tarstream import (
    MAX_EXTENSION_BYTES,
    TarReader,
    TarWriter,
)
from tests.support.layers import dir, file, hardlink, raw_member, symlink, tar_bytes

FORMATS: dict[str, Literal[0, 1, 2]] = {
    "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}


def read_all(data: bytes) -> list[tuple[str, str, int, int, str, bytes]]:
    """(name, type, mode, mtime, linkname, data) of every member, copying all data."""
    reader = TarReader(io.BytesIO(data), layer="sha256:test")
    found = []
    for member in reader:
        out = io.BytesIO()
        reader.copy_data(member, out)
        found.append((member.name.rstrip("/"), member.type, member.mode, member.mtime,
                      member.linkname, out.getvalue()))
    return found


@pytest.mark.parametrize("fmt", FORMATS)
def test_reader_matches_tarfile_for_every_format(fmt: str) -> None:
    long_dir = "d" * 60 + "/" + "e" * 60  # over 100 bytes: ustar needs its prefix field
    entries = [
        dir("etc", 0o755, mtime=1700000000),
        file("etc/hosts", b"127.0.0.1 localhost\n", 0o644, mtime=1700000001),
        file(f"{long_dir}/{'f' * 60}", b"x" * 1000, 0o600),
        symlink("lib64", "usr/lib64"),
        hardlink("etc/hosts.bak", "etc/hosts"),
        file("empty", b""),
    ]
    if fmt != "ustar":
        entries.append(file("n" * 300, b"long name"))
        entries.append(symlink("long-link", "t" * 300))
    data = tar_bytes(*entries, tar_format=FORMATS[fmt])
    expected = []
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for info in archive:
            body = _body(archive, info)
            expected.append((info.name, info.type.decode(), info.mode, info.mtime,
                             info.linkname, body))
    assert read_all(data) == expected


def test_reader_takes_non_ascii_names_from_pax() -> None:
    data = tar_bytes(file("über/naïve-日本.txt", b"hi"), symlink("zielö", "ziel/ä"))
    names = [(name, link) for name, _, _, _, link, _ in read_all(data)]
    assert names == [("über/naïve-日本.txt", ""), ("zielö", "ziel/ä")]


def test_reader_reads_base256_size_and_mtime() -> None:
    data = raw_member("big", data=b"0123456789", mtime=2**40, base256=True) + bytes(1024)
    [(name, _, _, mtime, _, body)] = read_all(data)
    assert (name, mtime, body) == ("big", 2**40, b"0123456789")


def test_reader_reads_large_uid_written_in_base256_by_gnu_tar() -> None:
    info = tarfile.TarInfo("owned")
    info.uid = 8**8 + 5
    data = info.tobuf(tarfile.GNU_FORMAT) + bytes(1024)
    [member] = list(TarReader(io.BytesIO(data), layer="l"))
    assert member.uid == 8**8 + 5


def test_reader_skips_data_it_was_not_asked_to_copy() -> None:
    data = tar_bytes(file("a", b"A" * 3000), file("b", b"B" * 5), file("c", b"C"))
    reader = TarReader(io.BytesIO(data), layer="l")
    members = list(reader)
    assert [(m.name, m.size, m.ordinal) for m in members] == [("a", 3000, 0), ("b", 5, 1),
                                                              ("c", 1, 2)]


def test_reader_copies_data_across_chunk_boundaries() -> None:
    payload = bytes(range(256)) * 9000  # over 2 MiB: spans several 1 MiB chunks
    data = tar_bytes(file("small", b"s"), file("big", payload), file("after", b"tail"))
    assert [body for *_, body in read_all(data)] == [b"s", payload, b"tail"]


def test_reader_ends_at_eof_without_end_of_archive_blocks() -> None:
    data = tar_bytes(file("a", b"1"), end=False)
    assert [name for name, *_ in read_all(data)] == ["a"]


def test_reader_refuses_a_bad_checksum() -> None:
    data = raw_member("a", data=b"x", checksum_delta=1) + bytes(1024)
    with pytest.raises(ContentRejected, match="bad checksum"):
        read_all(data)


def test_reader_refuses_a_member_cut_short() -> None:
    data = tar_bytes(file("a", b"x" * 5000), end=False)[:2048]
    with pytest.raises(ContentRejected, match="ends in the middle of a tar member"):
        read_all(data)


def test_reader_refuses_a_header_cut_short() -> None:
    data = tar_bytes(file("a", b"x"), tar_format=tarfile.USTAR_FORMAT)[:1100]
    with pytest.raises(ContentRejected, match="in the middle of a tar header"):
        read_all(data)


def test_reader_refuses_a_pax_header_over_the_cap() -> None:
    data = raw_member("a", pax={"comment": "c" * MAX_EXTENSION_BYTES}) + bytes(1024)
    with pytest.raises(ContentRejected, match="PAX header"):
        read_all(data)


def test_reader_ignores_global_pax_headers() -> None:
    glob = raw_member("pax_global_header", type=b"g", data=b"17 path=evil/../x\n")
    data = glob + tar_bytes(file("a", b"1"))
    assert [name for name, *_ in read_all(data)] == ["a"]


def test_reader_marks_pax_sparse_members() -> None:
    data = raw_member("s", data=b"map", pax={"GNU.sparse.major": "1"}) + bytes(1024)
    [member] = list(TarReader(io.BytesIO(data), layer="l"))
    assert member.type == "S"


def _body(archive: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    """A member's data as tarfile reads it (empty for all but regular files)."""
    if not info.isfile():
        return b""
    reader = archive.extractfile(info)
    assert reader is not None
    return reader.read()


def _writes(data: bytes) -> Callable[[BinaryIO], None]:
    """A TarWriter copy callback that writes `data`."""
    def copy(out: BinaryIO) -> None:
        out.write(data)
    return copy


def write_and_read(
    build: Callable[[TarWriter], None],
) -> list[tuple[str, bytes, int, int, int, str, bytes]]:
    out = io.BytesIO()
    writer = TarWriter(out)
    build(writer)
    writer.close()
    out.seek(0)
    with tarfile.open(fileobj=out) as archive:
        return [(i.name, i.type, i.mode, i.uid, i.gid, i.linkname, _body(archive, i))
                for i in archive]


def test_writer_output_reads_back_with_tarfile() -> None:
    deep = "/".join(["segment"] * 30)  # 239 bytes: needs PAX
    prefixed = "p" * 120 + "/" + "n" * 90  # fits ustar with the prefix field

    def build(writer: TarWriter) -> None:
        writer.directory("usr", mode=0o755, mtime=5)
        writer.symlink("ziel-ä", "l" * 150, mtime=5)
        writer.file(deep, mode=0o4755, mtime=5, size=3, copy=_writes(b"abc"))
        writer.file(prefixed, mode=0o600, mtime=5, size=0, copy=lambda out: None)
        writer.hardlink("ü", deep, mode=0o644, mtime=5)

    assert write_and_read(build) == [
        ("usr", tarfile.DIRTYPE, 0o755, 0, 0, "", b""),
        ("ziel-ä", tarfile.SYMTYPE, 0o777, 0, 0, "l" * 150, b""),
        (deep, tarfile.REGTYPE, 0o4755, 0, 0, "", b"abc"),
        (prefixed, tarfile.REGTYPE, 0o600, 0, 0, "", b""),
        ("ü", tarfile.LNKTYPE, 0o644, 0, 0, deep, b""),
    ]


def test_writer_uses_pax_size_from_8_gib() -> None:
    out = io.BytesIO()
    TarWriter(out).file("huge", mode=0o644, mtime=0, size=9 * 2**30, copy=lambda o: None)
    out.write(bytes(512))  # one data block is enough to parse the header
    member = next(iter(TarReader(io.BytesIO(out.getvalue()), layer="l")))
    assert (member.name, member.size) == ("huge", 9 * 2**30)
