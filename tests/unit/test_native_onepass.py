"""The compiled one-pass flatten (pipeline/native_onepass.py, native/onepass.c) against
the Python one (streaming.stream_flat_tar): the same tar bytes and the same verdict
(verified, speculation failed with the same reason, or the same refusal) on generated
layer stacks, the hostile corpus, 120 layers, and a 400k-file image.

test_streaming_flatten.py runs each of its cases over the compiled path as well
(tests/support/compiled_flatten.py: assert_same_one_pass).
"""

from __future__ import annotations

import gc
import io
import os
import random
import tempfile

import pytest

from imagegw.domain.errors import ContentRejected
from imagegw.pipeline import compact
from imagegw.pipeline.members import MemberPolicy
from imagegw.pipeline.tarstream import REGULAR, _header
from tests.support.compiled_flatten import assert_same_one_pass, one_pass_outcome
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

try:
    from imagegw.pipeline import native_onepass
except ImportError as error:  # not built: every test here fails (CI builds it)
    native_onepass = None  # type: ignore[assignment]
    _IMPORT_ERROR: ImportError | None = error
else:
    _IMPORT_ERROR = None

POLICY = MemberPolicy()


@pytest.fixture(autouse=True)
def _compiled() -> None:
    if native_onepass is None and os.environ.get("CI") == "true":
        pytest.fail(f"the compiled one-pass flatten is not built: {_IMPORT_ERROR}")
    if native_onepass is None:
        pytest.skip("the compiled one-pass flatten is not built (scripts/setup)")


def same(*layers: list[Member], max_data_bytes: int = 1 << 40) -> tuple:
    return assert_same_one_pass([tar_bytes(*members) for members in layers],
                                max_data_bytes=max_data_bytes)


def test_layers_are_written_newest_first_byte_for_byte() -> None:
    got = same([dir("usr"), file("usr/a", b"old"), file("usr/b", b"b" * 700),
                symlink("lib", "usr"), file("x" * 150, b"long name")],
               [file("usr/a", b"new", 0o755, mtime=5), whiteout("usr/b"), dir("é", mtime=2),
                hardlink("usr/c", "usr/a"), hardlink("usr/d", "x" * 150)])
    assert got[0] == "tree"


@pytest.mark.parametrize("layers", [
    [[symlink("lib", "usr/lib"), dir("usr/lib")], [file("lib/x", b"x")]],
    [[file("a", b"1")], [hardlink("b", "a")], [whiteout("a")]],
    [[file("a", b"old"), file("a", b"new")]],
    [[file("a", b"1"), dir("a")]],
    [[file("a", b"1")], [file("a/b", b"2")]],
    [[file("a", b"1")], [dir("a"), file("a/b", b"2")], [opaque(""), file("c", b"3")]],
], ids=["symlinked parent", "whited-out link target", "twice in a layer",
        "dir below a file", "refused image", "opaque root"])
def test_the_verdicts_are_the_python_ones(layers: list[list[Member]]) -> None:
    same(*layers)


def test_data_beyond_the_limit_fails_the_speculation() -> None:
    got = same([file("a", b"x" * 600)], [file("b", b"y" * 600)], max_data_bytes=1000)
    assert got == ("fallback", "the data written passes the unpacked-size limit")


def test_a_member_refused_midway_refuses_the_image() -> None:
    # Written up to the refused member (a PAX path with ".."), then refused like Python.
    refused = (raw_member("b", data=b"2" * 700) + raw_member("x", pax={"path": "../escape"})
               + raw_member("c", data=b"3") + bytes(1024))
    got = assert_same_one_pass([tar_bytes(file("a", b"1")), refused])
    assert got[0] == "refused" and "escape" in got[1]


def test_a_layer_cut_in_a_file_written_is_refused() -> None:
    whole = tar_bytes(file("a", b"1"), file("big", b"z" * (3 << 20)))
    layers = [tar_bytes(file("b", b"2")), whole[:(2 << 20)]]
    assert assert_same_one_pass(layers)[0] == "refused"


def test_large_files_cross_the_read_buffer() -> None:
    rng = random.Random(7)
    members = [file(f"f{k}", rng.randbytes(rng.choice([0, 1, 511, 512, 513, 1 << 20,
                                                       (1 << 20) + 3, 3 << 20])))
               for k in range(12)]
    assert same(members[:6], members[6:], [hardlink("h", "f1"), file("f2", b"new")])[0] == "tree"


def test_a_closed_pipe_is_a_broken_pipe_error() -> None:
    assert native_onepass is not None
    layers = [tar_bytes(file("a", b"x" * (3 << 20)))]
    reader, writer = os.pipe()
    os.close(reader)
    try:
        with pytest.raises(BrokenPipeError):
            native_onepass.stream_flat_tar(["l0"], lambda number: io.BytesIO(layers[0]), writer,
                                           policy=POLICY, max_data_bytes=1 << 40)
    finally:
        os.close(writer)


def test_the_indexes_are_the_scanner_ones_and_come_as_each_layer_ends() -> None:
    assert native_onepass is not None
    layers = [tar_bytes(dir("d"), file("d/a", b"1")), tar_bytes(file("d/a", b"2"), whiteout("x"))]
    made: list[int] = []
    with tempfile.TemporaryFile() as out:
        streamed = native_onepass.stream_flat_tar(
            ["l0", "l1"], lambda number: io.BytesIO(layers[number]), out, policy=POLICY,
            max_data_bytes=1 << 40, on_layer_index=lambda number, index: made.append(number))
        tree = streamed.verify()
    assert made == [1, 0]
    assert streamed.indexes == [compact.scan_layer(io.BytesIO(data), layer=f"l{number}",
                                                   policy=POLICY)
                                for number, data in enumerate(layers)]
    assert (tree.files, tree.dirs) == (1, 1)


# -- generated layer stacks, the hostile corpus, many layers, many files ---------------


def test_generated_stacks_get_the_python_bytes_and_verdicts() -> None:
    from tests.unit.test_streaming_flatten import random_stack

    rng = random.Random(20261207)
    outcomes = {"tree": 0, "fallback": 0, "refused": 0}
    for _ in range(600):
        outcomes[assert_same_one_pass(random_stack(rng))[0]] += 1
    assert min(outcomes.values()) > 40, outcomes


def test_hostile_corpus_gets_the_same_verdicts_and_bytes() -> None:
    from tests.unit.test_native_flat import read_all

    checked = 0
    for case in cases():
        if not case.layers:
            continue
        try:
            layers = [read_all(blob) for blob in case.layers]
        except ContentRejected:
            continue  # refused while decompressing, before any member
        assert_same_one_pass(layers)
        checked += 1
    assert checked > 20


def test_a_hundred_and_twenty_layers_over_one_tree() -> None:
    layers = overlapping_layers(120, seed=120)
    outcome = assert_same_one_pass(layers)
    assert outcome[0] in ("tree", "fallback")


def plain_layer(number: int, names: list[str], whiteouts: list[str]) -> bytes:
    """A layer tar of 2-byte files (one directory entry per 1000) and whiteouts."""
    parts = []
    for path in sorted({name.rpartition("/")[0] for name in names}):
        parts.append(_header(path, "5", mode=0o755, mtime=number))
    data = b"%02d" % number + bytes(510)
    for path in names:
        parts.append(_header(path, REGULAR, mode=0o644, mtime=number, size=2))
        parts.append(data)
    for path in whiteouts:
        parent, _, base = path.rpartition("/")
        parts.append(_header(f"{parent}/.wh.{base}", REGULAR, mode=0o644, mtime=0))
    return b"".join(parts) + bytes(1024)


def test_a_400k_file_image_over_40_layers() -> None:
    assert native_onepass is not None
    layers = []
    expected: set[str] = set()
    for number in range(40):
        # 10k new files a layer, the previous layer's first 500 again (overwritten),
        # whiteouts of 200 files of the layer before that.
        names = [f"l{number:02d}/d{i // 1000:03d}/f{i:05d}" for i in range(10_000)]
        again = [f"l{number - 1:02d}/d{i // 1000:03d}/f{i:05d}" for i in range(500)] \
            if number else []
        gone = [f"l{number - 2:02d}/d{i // 1000:03d}/f{i:05d}" for i in range(600, 800)] \
            if number > 1 else []
        layers.append(plain_layer(number, names + again, gone))
        expected -= set(gone)
        expected |= set(names + again)
    with tempfile.TemporaryFile() as out:
        streamed = native_onepass.stream_flat_tar(
            [f"layer{n}" for n in range(40)], lambda number: io.BytesIO(layers[number]), out,
            policy=POLICY, max_data_bytes=1 << 40)
        tree = streamed.verify()
        size = out.tell()
        assert tree.files == len(expected) == 40 * 10_000 - 38 * 200
        # Every header one block (short ASCII names), each file one data block; the 40
        # top directories have no entry (tar2sqfs makes them).
        assert tree.dirs == 40 + 400
        assert size == 512 * (400 + 2 * tree.files + 2)
        out.seek(0)
        first = out.read(1024)
    # Newest first: the first entry is the newest layer's first directory (a directory
    # of layer 38 it writes into).
    assert first[:100].rstrip(b"\0") == b"l38/d000"
    # The same bytes as the Python one-pass flatten on a tenth of it (its cost per member).
    assert_same_one_pass([layer for layer in layers[:4]])


def interleaved_layer(number: int, dirs: int, per_dir: int, *, skip: int = 0,
                      extra: tuple[bytes, ...] | list[bytes] = ()) -> bytes:
    """Files k of directories t/d0..t/d{dirs-1} in turn (k = 0..per_dir-1, every
    `skip`-th directory left out when skip), so no two entries in a row share a parent:
    the entries below a directory meet its ancestors once per layer (onepass.c's settled
    directories), not once per run of siblings."""
    data = b"%02d" % number + bytes(510)
    parts = []
    for k in range(per_dir):
        for d in range(dirs):
            if skip and d % skip == 0:
                continue
            parts.append(_header(f"t/d{d}/f{k}", REGULAR, mode=0o644, mtime=number, size=2))
            parts.append(data)
    return b"".join(parts) + b"".join(extra) + bytes(1024)


def test_interleaved_directories_past_the_settled_cache_get_the_python_bytes() -> None:
    # 9000 directories (more than the cache's 8192 slots: slots are shared and evicted),
    # two or three files each, in turns. The newer layer makes directories opaque, whites them out
    # or replaces one by a file: what it hides below them is decided afresh in the older
    # layer, whatever the newer layer settled.
    def wh(path: str, opaque_dir: bool = False) -> bytes:
        parent, _, base = path.rpartition("/")
        name = f"{path}/.wh..wh..opq" if opaque_dir else f"{parent}/.wh.{base}"
        return _header(name, REGULAR, mode=0o644, mtime=0)

    # (the newer layer has no entries below t/d0, t/d5, t/d10...)
    hide = [wh(f"t/d{d}", opaque_dir=True) for d in range(1, 9000, 7) if d % 5]
    hide += [wh(f"t/d{d}") for d in range(10, 9000, 15)]
    hide += [_header("t/d5", REGULAR, mode=0o644, mtime=1)]
    older = interleaved_layer(0, 9000, 3)  # t/d*/f2: only in the older layer
    newer = interleaved_layer(1, 9000, 2, skip=5, extra=hide)
    outcome = assert_same_one_pass([older, newer])
    assert outcome[0] == "tree", outcome
    # A settled directory written as a file later in the same layer is the same clash.
    clash = interleaved_layer(0, 50, 2, extra=[_header("t/d7", REGULAR, mode=0o644, mtime=0)])
    assert assert_same_one_pass([clash]) == ("fallback", "'t/d7' is a directory and something else")


def test_the_oracle_compares_bytes_not_only_verdicts() -> None:
    # The oracle itself: a wrong tar is noticed (it compares bytes, not just verdicts).
    a = one_pass_outcome([tar_bytes(file("a", b"1"))], compiled=True)
    b = one_pass_outcome([tar_bytes(file("a", b"2"))], compiled=True)
    assert a[0] == b[0] == "tree" and a != b


def test_a_released_stream_refuses_use_and_keeps_its_indexes_and_tree() -> None:
    assert native_onepass is not None
    layers = [tar_bytes(dir("d"), file("d/a", b"1"), file("d/b", b"2")),
              tar_bytes(file("d/b", b"3"), hardlink("d/c", "d/b"), whiteout("d/a"))]
    with tempfile.TemporaryFile() as out:
        streamed = native_onepass.stream_flat_tar(
            ["l0", "l1"], lambda number: io.BytesIO(layers[number]), out, policy=POLICY,
            max_data_bytes=1 << 40)
        tree = streamed.verify()
        indexes = list(streamed.indexes)
        streamed.release()
        streamed.release()  # twice is harmless
        for use in (streamed.verify, streamed.exact_tree, streamed.write_deferred_links):
            with pytest.raises(RuntimeError, match="released"):
                use()
    # The verdict taken before the release stands; the tree and the indexes stay usable.
    assert (tree.files, tree.hardlinks, tree.dirs) == (1, 1, 1)
    assert streamed.indexes == indexes
    gc.collect()
    assert tree.nodes > 0


def test_a_tree_outlives_the_released_stream_on_generated_stacks() -> None:
    # squashfs.py keeps the counts of the tree verify() gave, then releases the stream:
    # the tree reads nothing of the freed path table (its names are in the indexes).
    from tests.unit.test_streaming_flatten import random_stack

    assert native_onepass is not None
    rng = random.Random(21)
    trees = 0
    for _ in range(200):
        opened = [io.BytesIO(data) for data in random_stack(rng)]
        with tempfile.TemporaryFile() as out:
            try:
                streamed = native_onepass.stream_flat_tar(
                    [f"l{n}" for n in range(len(opened))], opened.__getitem__, out,
                    policy=POLICY, max_data_bytes=1 << 40)
                tree = streamed.verify()
            except (native_onepass.SpeculationFailed, ContentRejected):
                continue
            counts = (tree.files, tree.dirs, tree.symlinks, tree.hardlinks, tree.data_bytes)
            streamed.release()
            gc.collect()
            assert (tree.files, tree.dirs, tree.symlinks, tree.hardlinks,
                    tree.data_bytes) == counts
            assert tree.data_layers() == sorted(tree.data_layers())
            trees += 1
    assert trees > 30


def test_verify_after_the_tree_was_written_gives_the_same_verdict() -> None:
    # write() sorts the link groups by layer and member; verify and the deferred links
    # read them in the merge's order (native/flat.c: collect_order), sorted or not.
    assert native_onepass is not None
    layers = [tar_bytes(file("z", b"0"), file("a/b", b"1"), file("m", b"2")),
              tar_bytes(file("b", b"3"), hardlink("c", "z"), file("a/a", b"4")),
              tar_bytes(file("y", b"5"), file("m", b"6"))]
    verdicts = []
    for write_first in (False, True):
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as copy:
            streamed = native_onepass.stream_flat_tar(
                ["l0", "l1", "l2"], lambda number: io.BytesIO(layers[number]), out,
                policy=POLICY, max_data_bytes=1 << 40)
            if write_first:
                streamed.exact_tree().write(lambda number: io.BytesIO(layers[number]),
                                            copy.fileno())
            tree = streamed.verify()
            verdicts.append((tree.files, tree.hardlinks, tree.dirs))
    assert verdicts == [(6, 1, 1)] * 2


# -- the verify without the path table (issue 21: freed before the exact tree) -----------

def _spec_stack(rng: random.Random) -> list[list[tuple]]:
    """Layers as member specs over a small name space (so they collide), to be mutated."""
    from tests.unit.test_streaming_flatten import NAMES, PARENTS

    layers: list[list[tuple]] = []
    files: list[str] = []
    for _ in range(rng.randint(1, 4)):
        members: list[tuple] = []
        for _ in range(rng.randint(1, 8)):
            depth = rng.choices([1, 2, 3], weights=[1, 3, 2])[0]
            path = "/".join(rng.choice(PARENTS if level < depth - 1 else NAMES)
                            for level in range(depth))
            kind = rng.choices(["file", "dir", "symlink", "hardlink", "whiteout"],
                               weights=[8, 4, 2, 2, 1])[0]
            if kind == "file":
                files.append(path)
                members.append(("file", path, b"x" * rng.randint(0, 3), rng.randint(0, 2)))
            elif kind == "dir":
                members.append(("dir", path, rng.choice([0o755, 0o700]), rng.randint(0, 2)))
            elif kind == "symlink":
                members.append(("symlink", path, rng.choice(["d", "e/d", "a"]), rng.randint(0, 2)))
            elif kind == "hardlink":
                members.append(("hardlink", path, rng.choice(files or NAMES), 0))
            else:
                members.append(("whiteout", path, None, 0))
        layers.append(members)
    return layers


def _mutated(layers: list[list[tuple]], rng: random.Random) -> list[list[tuple]]:
    """The same stack with one member changed in what the verify compares: a file's data
    (the offsets after it move), a directory's mode or time, a symlink's target or time,
    a hardlink's target, or a member renamed."""
    copy = [list(members) for members in layers]
    members = rng.choice(copy)
    at = rng.randrange(len(members))
    kind, path, extra, mtime = members[at]
    change = rng.choice(["extra", "mtime", "rename"])
    if change == "rename":
        path = path[:-1] + ("b" if path.endswith("a") else "a")
    elif change == "mtime":
        mtime += 1
    elif kind == "file":
        extra += b"y"
    elif kind == "dir":
        extra ^= 0o055
    elif kind in ("symlink", "hardlink"):
        extra = "c" if extra != "c" else "b"
    members[at] = (kind, path, extra, mtime)
    return copy


def _render(layers: list[list[tuple]]) -> list[bytes]:
    made = {"file": lambda p, x, t: file(p, x, mtime=t), "dir": lambda p, x, t: dir(p, x, mtime=t),
            "symlink": lambda p, x, t: symlink(p, x, mtime=t),
            "hardlink": lambda p, x, t: hardlink(p, x), "whiteout": lambda p, x, t: whiteout(p)}
    return [tar_bytes(*(made[kind](path, extra, mtime) for kind, path, extra, mtime in members))
            for members in layers]


def _both_verdicts(written: list[bytes], image: list[bytes]) -> tuple | None:
    """The verdicts on the one pass over `written` against the exact tree of `image`:
    with the path table (each path of the tree looked up), then without it (each record
    resolved in the tree); None when either stack cannot get that far."""
    assert native_onepass is not None
    from imagegw.pipeline import native_flat

    names = [f"l{n}" for n in range(len(written))]
    with tempfile.TemporaryFile() as out:
        try:
            streamed = native_onepass.stream_flat_tar(
                names, lambda number: io.BytesIO(written[number]), out, policy=POLICY,
                max_data_bytes=1 << 40)
            indexes = [compact.scan_layer(io.BytesIO(data), layer=f"l{n}", policy=POLICY)
                       for n, data in enumerate(image)]
            by_table = native_flat.merge(indexes).verify(streamed._state().state)
        except (native_onepass.SpeculationFailed, ContentRejected):
            return None
        emitter = streamed._state()
        emitter.forget_paths()
        by_records = native_flat.merge(indexes).verify(emitter.state)
        again = native_flat.merge(indexes).verify(emitter.state)  # the table freed again
    return by_table, by_records, again


def test_the_verify_from_the_records_gives_every_verdict_the_path_table_gave() -> None:
    rng = random.Random(2112)
    outcomes: dict[str, int] = {"exact": 0, "counts": 0, "caught": 0}
    for _ in range(1500):
        layers = _spec_stack(rng)
        written = _render(layers)
        image = written if rng.random() < 0.3 else _render(_mutated(layers, rng))
        verdicts = _both_verdicts(written, image)
        if verdicts is None:
            continue
        by_table, by_records, again = verdicts
        assert by_records == by_table == again, (layers, image is written)
        if by_table is None:
            outcomes["exact"] += 1
        elif "were written; the image has" in by_table:
            outcomes["counts"] += 1
        else:  # same counts, different paths, kinds, modes, times, targets or data
            outcomes["caught"] += 1
    assert outcomes["exact"] > 100 and outcomes["caught"] > 100, outcomes


def test_a_mismatch_with_the_same_counts_is_caught_without_the_path_table() -> None:
    written = _render([[("dir", "d", 0o755, 1), ("file", "d/a", b"1", 0),
                        ("symlink", "s", "d", 0)]])
    for image, reason in [
        ([[("dir", "d", 0o700, 1), ("file", "d/a", b"1", 0), ("symlink", "s", "d", 0)]],
         "the directories written are not the image's"),
        ([[("dir", "d", 0o755, 1), ("file", "d/a", b"1", 0), ("symlink", "s", "e", 0)]],
         "the symlinks written are not the image's"),
        ([[("dir", "d", 0o755, 1), ("file", "d/b", b"1", 0), ("symlink", "s", "d", 0)]],
         "'d/b' is not the file written from layer 1"),
    ]:
        assert _both_verdicts(written, _render(image)) == (reason, reason, reason)


def test_a_stream_whose_path_table_was_freed_refuses_more_writing() -> None:
    assert native_onepass is not None
    from imagegw.pipeline import native_scan

    # "c" links to "b" of the older layer, read after it: deferred to the end.
    layers = [tar_bytes(file("a", b"1"), file("b", b"2")), tar_bytes(hardlink("c", "b"))]
    with tempfile.TemporaryFile() as out:
        streamed = native_onepass.stream_flat_tar(
            ["l0", "l1"], lambda number: io.BytesIO(layers[number]), out, policy=POLICY,
            max_data_bytes=1 << 40)
        tree = streamed.verify()
        assert (tree.files, tree.hardlinks) == (2, 1)
        emitter = streamed._state()
        assert emitter.deferred == 1
        with pytest.raises(RuntimeError, match="path table was freed"):
            streamed.write_deferred_links()
        with pytest.raises(RuntimeError, match="path table was freed"):
            tree.write_deferred(emitter.state)
        with pytest.raises(RuntimeError, match="path table was freed"):
            native_scan.scan_layer(io.BytesIO(layers[0]), layer="l0", policy=POLICY,
                                   emitter=emitter, number=0)
        streamed.release()
