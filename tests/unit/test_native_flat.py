"""The compiled merge and tar writer (pipeline/native_flat.py, native/flat.c) against the
Python reference: byte-identical tars from flatten.write_flat_tar(merge_layers(...)) on
generated layer stacks, the hostile corpus, 100+ layers and a 400k-file image, and the
same refusals.

test_flatten.py and test_streaming_flatten.py run every OCI-semantics case over the
compiled path as well (tests/support/compiled_flatten.py).
"""

from __future__ import annotations

import io
import os
import random
import tarfile
import tempfile
from collections.abc import Callable
from typing import BinaryIO

import pytest

from imagegw.domain.errors import ContentRejected
from imagegw.pipeline import compact
from imagegw.pipeline.decompress import open_layer_stream
from imagegw.pipeline.flatten import Entry, LayerIndex, index_layer, merge_layers, write_flat_tar
from imagegw.pipeline.members import Kind, MarkerKind, MemberPolicy
from tests.support.hostile_corpus import cases
from tests.support.layers import (
    Member,
    dir,
    file,
    hardlink,
    opaque,
    overlapping_layers,
    raw_member,
    symlink,
    tar_bytes,
    whiteout,
)

POLICY = MemberPolicy()


# Without the extension these are skipped; test_flatten.py's
# test_the_compiled_flatten_is_built_in_ci fails in CI then.
native_flat = pytest.importorskip("imagegw.pipeline.native_flat")


def indexes_of(layers: list[bytes]) -> list[LayerIndex]:
    return [index_layer(io.BytesIO(data), layer=f"layer{number}", policy=POLICY)
            for number, data in enumerate(layers)]


def python_tar(indexes: list[LayerIndex], layers: list[bytes]) -> bytes:
    out = io.BytesIO()
    write_flat_tar(merge_layers(indexes), lambda number: io.BytesIO(layers[number]), out)
    return out.getvalue()


def compiled_tar(indexes: list[bytes], open_layer: Callable[[int], BinaryIO],
                 on_bytes: Callable[[int], None] | None = None) -> bytes:
    tree = native_flat.merge(indexes)
    with tempfile.TemporaryFile() as out:
        native_flat.write_tar(tree, open_layer, out, on_bytes=on_bytes)
        out.seek(0)
        return out.read()


def outcome(run: Callable[[], bytes]) -> bytes | tuple[str, str | None]:
    try:
        return run()
    except ContentRejected as error:
        return error.message, error.hint


def assert_same(layers: list[bytes]) -> bytes | tuple[str, str | None]:
    """Both flattens over the layers: the same bytes, or the same refusal."""
    indexes = indexes_of(layers)
    expected = outcome(lambda: python_tar(indexes, layers))
    got = outcome(lambda: compiled_tar([compact.encode(index) for index in indexes],
                                       lambda number: io.BytesIO(layers[number])))
    assert got == expected
    return got


# -- generated layer stacks ---------------------------------------------------------

DIRS = ["usr", "lib", "etc", "ünï", "a" * 60, "x"]
LEAVES = ["a", "b", "c", "usr", "lib", "日本", "é", "\U0001f600", "b" * 70, ".hidden"]
TARGETS = ["usr", "/usr/lib", "../../etc", "lib/../usr", "x/y", "/", ".", "missing",
           "usr/a", "c" * 120]


def random_member(rng: random.Random, number: int, files: list[str]) -> Member:
    depth = rng.choices([1, 2, 3, 4], weights=[2, 4, 3, 1])[0]
    path = "/".join([*(rng.choice(DIRS) for _ in range(depth - 1)), rng.choice(LEAVES)])
    kind = rng.choices(["file", "dir", "symlink", "hardlink", "whiteout", "opaque"],
                       weights=[10, 4, 3, 2, 2, 1])[0]
    mtime = rng.choice([0, 1, 1700000000])
    if kind == "file":
        files.append(path)
        return file(path, rng.randbytes(rng.choice([0, 1, 511, 512, 513, 3000])),
                    rng.choice([0o644, 0o755, 0o4755, 0o600]), mtime=mtime)
    if kind == "dir":
        return dir(path, rng.choice([0o755, 0o700, 0o1777]), mtime=mtime)
    if kind == "symlink":
        return symlink(path, rng.choice(TARGETS), mtime=mtime)
    if kind == "hardlink":
        return hardlink(path, rng.choice(files) if files and rng.random() < 0.8 else
                        rng.choice(LEAVES))
    if kind == "whiteout":
        return whiteout(path)
    return opaque(path.rpartition("/")[0] if rng.random() < 0.5 else path)


def random_stack(rng: random.Random, layers: int) -> list[bytes]:
    files: list[str] = []
    return [tar_bytes(*(random_member(rng, number, files) for _ in range(rng.randint(1, 12))))
            for number in range(layers)]


def test_generated_stacks_give_byte_identical_tars_or_the_same_refusal() -> None:
    rng = random.Random(21)
    written = refused = 0
    for _ in range(400):
        got = assert_same(random_stack(rng, rng.randint(1, 6)))
        written += isinstance(got, bytes)
        refused += not isinstance(got, bytes)
    assert written > 100 and refused > 20, (written, refused)


def test_children_are_sorted_as_python_sorts_str_with_surrogate_escapes() -> None:
    # "\x80" alone is not UTF-8: Python holds it as U+DC80, after "é" (U+E9) and before
    # U+E000, although its byte sorts before both; byte order would differ.
    names = [b"\x80", b"\xff", "é".encode(), "\ue000".encode(), "\U0001f600".encode(), b"z",
             b"\xc3", b"\xed\xa0\x80", b"\xf0\x9f", b"a\x80b"]
    layer = b"".join(raw_member(name, type=b"5") for name in names) + bytes(1024)
    got = assert_same([layer])
    assert isinstance(got, bytes)
    expected = sorted(name.decode("utf-8", "surrogateescape") for name in names)
    assert expected != [name.decode("utf-8", "surrogateescape") for name in sorted(names)]
    with tarfile.open(fileobj=io.BytesIO(got), encoding="utf-8",
                      errors="surrogateescape") as archive:
        assert [info.name for info in archive] == expected


def test_long_non_ascii_and_huge_names_get_the_same_pax_records() -> None:
    long_dir = "/".join(["d" * 99] * 3)
    assert_same([tar_bytes(
        dir(long_dir), file(f"{long_dir}/{'f' * 100}", b"x"), file(f"{'p' * 154}/{'n' * 100}"),
        file(f"{'p' * 155}/{'n' * 100}"), symlink("ascii", "t" * 100),
        symlink("longer", "t" * 101), symlink("ü", "ü"), hardlink(f"{'h' * 200}", "ascii"),
        file("big", b"y" * 100, mtime=8**11 + 5))])


def test_paths_longer_than_a_member_name_through_symlinked_parents() -> None:
    # Each symlink's parent resolves through the ones before: the file lands 20 * 251
    # bytes deep although no member name is longer than 64 bytes.
    names = [f"s{number}" for number in range(20)]
    members: list[Member] = [symlink("/".join(names[:number + 1]), chr(65 + number) * 250)
                             for number in range(20)]
    got = assert_same([tar_bytes(*members, file("/".join(names) + "/f", b"deep"))])
    assert isinstance(got, bytes)
    with tarfile.open(fileobj=io.BytesIO(got)) as archive:
        deepest = max(archive.getnames(), key=len)
    assert len(deepest) == 20 * 251 + 1 and deepest.endswith("/f")


def test_hostile_corpus_gets_the_same_refusals_and_bytes() -> None:
    checked = 0
    for case in cases():
        if not case.layers:
            continue
        try:
            layers = [read_all(blob) for blob in case.layers]
            indexes = [index_layer(io.BytesIO(data), layer=f"layer{number}", policy=POLICY)
                       for number, data in enumerate(layers)]
        except ContentRejected:
            continue  # refused by the scanner's rules (members.py), before any merge
        assert_same(layers)
        assert indexes
        checked += 1
    assert checked > 20


def read_all(blob: bytes) -> bytes:
    with open_layer_stream(io.BytesIO(blob), max_uncompressed=32 << 20, layer="l") as stream:
        return b"".join(iter(lambda: stream.read(1 << 20), b""))


def test_a_hundred_and_twenty_layers_over_one_tree() -> None:
    layers = overlapping_layers(120, seed=120)
    got = assert_same(layers)
    assert isinstance(got, bytes) and len(got) > 10_000


# -- what the writer does with the layers ---------------------------------------------


def test_only_layers_with_surviving_data_are_opened_and_progress_counts_every_byte() -> None:
    layers = [tar_bytes(file("a", b"gone")), tar_bytes(file("b", b"x" * (3 << 20)),
                                                       hardlink("c", "b")),
              tar_bytes(whiteout("a"), dir("d"), symlink("l", "b"))]
    opened: list[int] = []
    counted: list[int] = []

    def open_layer(number: int) -> BinaryIO:
        opened.append(number)
        return io.BytesIO(layers[number])

    indexes = indexes_of(layers)
    got = compiled_tar([compact.encode(index) for index in indexes], open_layer, counted.append)
    assert got == python_tar(indexes, layers)
    assert opened == [1]
    assert sum(counted) == 3 << 20 and len(counted) <= 4
    tree = native_flat.merge([compact.encode(index) for index in indexes])
    assert (tree.files, tree.dirs, tree.symlinks, tree.hardlinks, tree.data_bytes) == \
        (1, 1, 1, 1, 3 << 20)
    assert tree.data_layers() == [1]


def test_a_layer_that_ends_before_a_needed_member_is_refused() -> None:
    layers = [tar_bytes(file("a", b"1"), file("b", b"2" * 3000))]
    encoded = [compact.encode(index) for index in indexes_of(layers)]
    with pytest.raises(ContentRejected, match="layer layer0 ends before member 'b'"):
        compiled_tar(encoded, lambda number: io.BytesIO(layers[0][:1024]))
    with pytest.raises(ContentRejected, match="ends in the middle of a tar member"):
        compiled_tar(encoded, lambda number: io.BytesIO(layers[0][:2100]))


def test_a_layer_stream_is_closed_even_when_writing_fails() -> None:
    layers = [tar_bytes(file("a", b"1"))]
    stream = io.BytesIO(b"")
    with pytest.raises(ContentRejected):
        compiled_tar([compact.encode(index) for index in indexes_of(layers)],
                     lambda number: stream)
    assert stream.closed


def test_a_closed_pipe_is_a_broken_pipe_error() -> None:
    layers = [tar_bytes(file("a", b"x" * (3 << 20)))]
    tree = native_flat.merge([compact.encode(index) for index in indexes_of(layers)])
    reader, writer = os.pipe()
    os.close(reader)
    try:
        with pytest.raises(BrokenPipeError):
            native_flat.write_tar(tree, lambda number: io.BytesIO(layers[0]), writer)
    finally:
        os.close(writer)


def test_bytes_that_are_not_a_compact_index_are_refused() -> None:
    good = compact.encode(indexes_of([tar_bytes(file("a"))])[0])
    for bad in (b"", b"not an index", good[:-1], good + b"x"):
        with pytest.raises(ValueError):
            native_flat.merge([bad])
    with pytest.raises(TypeError):
        native_flat.merge(["text"])


def one_entry_index(tail: bytes, *, path_length: int = 1, link_length: int = 0,
                    entries: int = 1) -> bytes:
    """An index whose one entry is a file "a" with these length fields, then `tail`
    (its link and varints, as they are or damaged)."""
    head = bytes([0]) + path_length.to_bytes(2, "little") + link_length.to_bytes(2, "little")
    return compact.encode_header(b"l", entries, 0, 0) + head + b"a" + tail


# mode 0o644, mtime 0, size 2, ordinal 0, offset 512 (+ 1): the good entry's varints
GOOD_VARINTS = b"\xa4\x03" + b"\x00" + b"\x02" + b"\x00" + b"\x81\x04"


@pytest.mark.parametrize("damaged", [
    one_entry_index(GOOD_VARINTS[:-1]),  # the last varint cut short
    one_entry_index(GOOD_VARINTS[:-2]),  # a varint missing
    one_entry_index(GOOD_VARINTS[:-1] + b"\x84"),  # runs past the end of the index
    one_entry_index(b"\x80" * 10 + b"\x00" + GOOD_VARINTS[2:]),  # more than 10 bytes
    one_entry_index(b"\xff" * 9 + b"\x02" + GOOD_VARINTS[2:]),  # beyond 64 bits
    one_entry_index(GOOD_VARINTS[:-2] + b"\x81" + b"\x80" * 8 + b"\x01"),  # offset > 2**63 - 1
    one_entry_index(GOOD_VARINTS, path_length=2000),  # the path runs past the end
    one_entry_index(GOOD_VARINTS, link_length=12),  # the link runs past the end
    one_entry_index(GOOD_VARINTS, entries=2),  # an entry missing
    one_entry_index(GOOD_VARINTS, path_length=0),  # no path
], ids=["cut-varint", "missing-varint", "varint-past-end", "11-byte-varint",
        "varint-over-64-bits", "offset-out-of-range", "path-past-end", "link-past-end",
        "entry-missing", "no-path"])
def test_a_damaged_entry_is_refused_by_both_parsers(damaged: bytes) -> None:
    assert native_flat.merge([one_entry_index(GOOD_VARINTS)]).data_offsets(0) == [512]
    with pytest.raises(ValueError, match="compact layer index"):
        native_flat.merge([damaged])
    if damaged != one_entry_index(GOOD_VARINTS, path_length=0):  # decode keeps "" paths
        with pytest.raises(ValueError, match="compact layer index"):
            compact.decode(damaged)


def test_the_largest_numbers_read_the_same_in_c_and_in_python() -> None:
    # 10-byte varints at the edges of their range: the offset 2**63 - 1, the size
    # 2**64 - 1, mtimes at both ends of int64 (zigzag).
    entries = [Entry("a", Kind.FILE, 0o7777, -(2**63), 2**64 - 1, "", 2**64 - 1, 2**63 - 1),
               Entry("b", Kind.FILE, 0, 2**63 - 1, 0, "", 0, -1),
               Entry("c", Kind.DIR, 0o755, -1, 0, "", 1, 0)]
    data = compact.encode(LayerIndex("l", entries=entries))
    assert compact.decode(data).entries == entries
    assert list(compact.raw_entries(data))[0][1:6] == (0o7777, -(2**63), 2**64 - 1,
                                                       2**64 - 1, 2**63 - 1)
    assert sorted(native_flat.merge([data]).data_offsets(0)) == [-1, 2**63 - 1]


def test_negative_and_huge_mtimes_give_the_same_tar_in_c_and_in_python() -> None:
    # The scanner clamps what it reads from a tar; an index made elsewhere need not (the
    # writer clamps negative mtimes to 0: a wrong zigzag decode would not be 0).
    layer = tar_bytes(dir("d"), symlink("d/s", "/t"), file("d/f", b"x"))
    index = indexes_of([layer])[0]
    mtimes = {"d": -7, "d/s": 1_700_000_001, "d/f": 2**62 + 3}
    index = LayerIndex(index.layer, [entry._replace(mtime=mtimes[entry.path])
                                     for entry in index.entries])
    assert compiled_tar([compact.encode(index)], lambda number: io.BytesIO(layer)) == \
        python_tar([index], [layer])


def test_an_index_entry_with_more_than_permission_bits_is_refused_as_damaged() -> None:
    # A merged node keeps 12 bits of mode (members.sanitize_mode gives no more): an
    # index saying otherwise was not made by the scanner, and is not truncated.
    index = indexes_of([tar_bytes(file("a"))])[0]
    entry = index.entries[0]
    for mode, accepted in ((0o7777, True), (0o10644, False), (0o100644, False)):
        changed = LayerIndex(index.layer, [entry._replace(mode=mode)], index.markers,
                             index.dropped)
        if accepted:
            assert native_flat.merge([compact.encode(changed)]).files == 1
        else:
            with pytest.raises(ValueError, match="permission bits"):
                native_flat.merge([compact.encode(changed)])


# -- a 400k-file image ----------------------------------------------------------------

def synthetic_layer(number: int, names: list[bytes], whiteouts: list[bytes]
                    ) -> tuple[bytes, bytes]:
    """A compact index of `names` (2-byte files; one directory per 1000) and layer bytes
    holding each file's data at its offset (the writer reads nothing else)."""
    dirs = sorted({name.rpartition(b"/")[0] for name in names})
    parts = [compact.encode_header(f"layer{number}".encode(), len(dirs) + len(names),
                                   len(whiteouts), 0)]
    for ordinal, path in enumerate(dirs):
        parts.append(compact.encode_entry(1, 0o755, 0, 0, ordinal, 512, path, b""))
    for ordinal, path in enumerate(names, start=len(dirs)):
        offset = 512 * (1 + 2 * ordinal)
        parts.append(compact.encode_entry(0, 0o644, number, 2, ordinal, offset, path, b""))
    for path in whiteouts:
        parts.append(compact.encode_marker(0, path))
    blob = bytearray(512 * (2 + 2 * (len(dirs) + len(names))))
    for ordinal in range(len(dirs), len(dirs) + len(names)):
        offset = 512 * (1 + 2 * ordinal)
        blob[offset:offset + 2] = b"%02d" % number
    return b"".join(parts), bytes(blob)


def test_a_400k_file_image_over_40_layers() -> None:
    layers = 40
    indexes: list[bytes] = []
    blobs: list[bytes] = []
    expected: dict[bytes, tuple[int, int]] = {}  # path -> (layer, ordinal among files)
    for number in range(layers):
        # 10k new files a layer, and the previous layer's first 500 files again
        # (overwritten); whiteouts of 200 files of the layer before that.
        names = [b"l%02d/d%03d/f%05d" % (number, i // 1000, i) for i in range(10_000)]
        again = [b"l%02d/d%03d/f%05d" % (number - 1, i // 1000, i) for i in range(500)] \
            if number else []
        gone = [b"l%02d/d%03d/f%05d" % (number - 2, i // 1000, i) for i in range(600, 800)] \
            if number > 1 else []
        index, blob = synthetic_layer(number, names + again, gone)
        indexes.append(index)
        blobs.append(blob)
        for path in gone:
            expected.pop(path, None)
        expected.update((path, (number, ordinal))
                        for ordinal, path in enumerate(names + again))
    tree = native_flat.merge(indexes)
    assert tree.files == len(expected) == 40 * 10_000 - 38 * 200
    assert tree.data_bytes == 2 * tree.files
    assert tree.dirs == 40 + 40 * 10 and tree.symlinks == tree.hardlinks == 0
    with tempfile.TemporaryFile() as out:
        native_flat.write_tar(tree, lambda number: io.BytesIO(blobs[number]), out)
        size = out.tell()
        # Every header is one block (short ASCII names), each file one data block.
        assert size == 512 * (tree.dirs + 2 * tree.files + 2)
        out.seek(512 * tree.dirs)
        sample = random.Random(400).sample(range(tree.files), 50)
        files = sorted(expected, key=expected.__getitem__)  # written layer by layer
        for position in sample:
            out.seek(512 * (tree.dirs + 2 * position))
            header, data = out.read(512), out.read(512)
            path = files[position]
            assert header[:100].rstrip(b"\0") == path
            assert data[:2] == b"%02d" % expected[path][0]


def test_compact_index_entries_from_entries_made_in_python_merge_the_same() -> None:
    # Entries decoded from Python's own LayerIndex (the JSON-era form) merge the same.
    index = LayerIndex("l", entries=[Entry("a", Kind.DIR, 0o700, 3, 0, "", 0, 512),
                                     Entry("a/b", Kind.SYMLINK, 0o777, 4, 0, "/c", 1, 1024)],
                       markers=[(MarkerKind.OPAQUE, "a")])
    tree = native_flat.merge([compact.encode(index)])
    assert (tree.dirs, tree.symlinks, tree.files, tree.layers) == (1, 1, 0, ("l",))
