"""The one-pass flatten (newest first): exact whenever it vouches for its result.

Every case compares it with the two-pass flatten (index, merge, copy), including mtimes
and hardlink groups; a few hundred generated layer stacks hunt for the cases where
reading newest first could go wrong.
"""

from __future__ import annotations

import functools
import hashlib
import io
import random
import tarfile
from typing import BinaryIO

import pytest

from imagegw.domain.errors import ContentRejected
from imagegw.pipeline import prefetch
from imagegw.pipeline.flatten import index_layer, merge_layers, write_flat_tar
from imagegw.pipeline.members import MemberPolicy
from imagegw.pipeline.streaming import SpeculationFailed, stream_flat_tar
from tests.support.compiled_flatten import assert_same_merge, assert_same_one_pass, assert_same_tar
from tests.support.layers import Member, dir, file, hardlink, opaque, symlink, tar_bytes, whiteout

POLICY = MemberPolicy()
Tree = dict[str, tuple]


def canonical(data: bytes) -> Tree:
    """path -> (type, mode, mtime, link target or sha256, first name of its link group)."""
    tree: Tree = {}
    groups: dict[str, list[str]] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        for info in archive:
            if info.isdir():
                tree[info.name] = ("dir", info.mode, info.mtime, "")
            elif info.issym():
                tree[info.name] = ("symlink", info.mode, info.mtime, info.linkname)
            elif info.islnk():
                tree[info.name] = tree[info.linkname]
                groups.setdefault(info.linkname, [info.linkname]).append(info.name)
            else:
                reader = archive.extractfile(info)
                assert reader is not None
                tree[info.name] = ("file", info.mode, info.mtime,
                                   hashlib.sha256(reader.read()).hexdigest())
    # Parents without an entry are made by tar2sqfs: 0755, mtime 0 (its --defaults).
    for path in list(tree):
        parts = path.split("/")
        for depth in range(1, len(parts)):
            tree.setdefault("/".join(parts[:depth]), ("dir", 0o755, 0, ""))
    first = {name: min(names) for names in groups.values() for name in names}
    return {path: (*node, first.get(path, path)) for path, node in tree.items()}


def two_passes(layers: list[bytes]) -> Tree:
    """The exact flatten's tree; the compiled flatten writes the same bytes (or refuses
    the same)."""
    indexes = [index_layer(io.BytesIO(data), layer=f"layer{number}", policy=POLICY)
               for number, data in enumerate(layers)]
    try:
        tree = merge_layers(indexes)
    except ContentRejected as error:
        assert_same_merge(indexes, error)
        raise
    out = io.BytesIO()
    write_flat_tar(tree, lambda number: io.BytesIO(layers[number]), out)
    assert_same_tar(indexes, layers, out.getvalue())
    return canonical(out.getvalue())


def one_pass(layers: list[bytes], opened: list[int] | None = None) -> Tree:
    def open_layer(number: int) -> BinaryIO:
        if opened is not None:
            opened.append(number)
        return io.BytesIO(layers[number])

    assert_same_one_pass(layers)  # the compiled one-pass flatten: the same bytes and verdict
    out = io.BytesIO()
    streamed = stream_flat_tar([f"layer{number}" for number in range(len(layers))],
                               open_layer, out, policy=POLICY, max_data_bytes=1 << 40)
    written = canonical(out.getvalue())  # the tar is complete before it is proven exact
    streamed.verify()
    return written


def distribution_like() -> list[bytes]:
    """A base layer and three package-manager layers, as most images are built."""
    base = [dir("usr"), dir("usr/bin"), dir("usr/lib", mtime=5), symlink("bin", "usr/bin"),
            symlink("lib", "usr/lib"), dir("etc"), file("etc/os-release", b"v1"),
            file("usr/bin/sh", b"shell", 0o755, mtime=9), hardlink("usr/bin/dash", "usr/bin/sh"),
            file("usr/lib/libc.so", b"libc" * 1000, mtime=3), dir("var"), dir("var/cache"),
            file("var/cache/a", b"a"), file("var/cache/b", b"b")]
    apt = [dir("usr/lib", mtime=7), file("usr/lib/libz.so", b"zlib", mtime=4),
           file("etc/os-release", b"v2", mtime=6), whiteout("var/cache/a"),
           dir("opt"), file("opt/tool", b"tool", 0o755), hardlink("opt/tool2", "opt/tool")]
    cleanup = [dir("var/cache"), opaque("var/cache"), file("var/cache/new", b"n"),
               whiteout("usr/lib/libc.so"), file("usr/lib/libc.so.2", b"libc2")]
    app = [dir("app", 0o750, mtime=11), file("app/run", b"#!", 0o755),
           symlink("app/latest", "run"), hardlink("usr/bin/sh2", "usr/bin/sh")]
    return [tar_bytes(*members) for members in (base, apt, cleanup, app)]


def test_a_distribution_like_image_is_flattened_exactly_in_one_pass_newest_first() -> None:
    layers = distribution_like()
    opened: list[int] = []
    assert one_pass(layers, opened) == two_passes(layers)
    assert opened == [3, 2, 1, 0]


@pytest.mark.parametrize("name, layers", [
    ("member below a symlinked parent", [[symlink("lib", "usr/lib"), dir("usr/lib")],
                                         [file("lib/x", b"x")]]),
    ("hardlink whose target's own name is whited out later",
     [[file("a", b"1")], [hardlink("b", "a")], [whiteout("a")]]),
    ("a path twice in one layer", [[file("a", b"old"), file("a", b"new")]]),
    ("a file and then a directory below it in one layer", [[file("a", b"1"), dir("a")]]),
])
def test_what_one_pass_cannot_vouch_for_is_left_to_the_two_pass_flatten(
        name: str, layers: list[list[Member]]) -> None:
    blobs = [tar_bytes(*members) for members in layers]
    with pytest.raises(SpeculationFailed) as failed:
        one_pass(blobs)
    # The layers read so far come back indexed, so the fallback does not read them again.
    assert set(failed.value.indexes) <= set(range(len(blobs)))
    assert all(index.layer == f"layer{number}" for number, index in failed.value.indexes.items())
    two_passes(blobs)  # and that one can still flatten them


def test_a_refused_image_is_refused_not_written() -> None:
    layers = [tar_bytes(file("a", b"1")), tar_bytes(file("a/b", b"2"))]
    with pytest.raises((ContentRejected, SpeculationFailed)):
        one_pass(layers)
    with pytest.raises(ContentRejected, match="not a directory"):
        two_passes(layers)


def test_data_beyond_the_limit_stops_the_one_pass_flatten() -> None:
    layers = [tar_bytes(file("a", b"x" * 600)), tar_bytes(file("b", b"y" * 600))]
    assert assert_same_one_pass(layers, max_data_bytes=1000)[0] == "fallback"
    with pytest.raises(SpeculationFailed, match="limit"):
        stream_flat_tar(["l0", "l1"], lambda number: io.BytesIO(layers[number]), io.BytesIO(),
                        policy=POLICY, max_data_bytes=1000)


# -- generated layer stacks ---------------------------------------------------------

#: Directory names, and leaf names (one of them also a directory name, to collide).
PARENTS = ["d", "e"]
NAMES = ["a", "b", "c", "d"]


def _layer_stream(layers: list[bytes], number: int) -> BinaryIO:
    return io.BytesIO(layers[number])


def random_stack(rng: random.Random) -> list[bytes]:
    """2-4 layers of random members over a small name space, so that they collide."""
    layers = []
    files: list[str] = []
    for number in range(rng.randint(2, 4)):
        members: list[Member] = []
        for _ in range(rng.randint(1, 7)):
            depth = rng.choices([1, 2, 3], weights=[1, 3, 2])[0]
            path = "/".join([rng.choice(PARENTS if level < depth - 1 else NAMES)
                             for level in range(depth)])
            kind = rng.choices(["file", "dir", "symlink", "hardlink", "whiteout", "opaque"],
                               weights=[8, 4, 2, 2, 2, 1])[0]
            mtime = rng.randint(0, 3)
            if kind == "file":
                files.append(path)
                members.append(file(path, f"{number}:{path}".encode(), rng.choice([0o644, 0o755]),
                                    mtime=mtime))
            elif kind == "dir":
                members.append(dir(path, rng.choice([0o755, 0o700]), mtime=mtime))
            elif kind == "symlink":
                members.append(symlink(path, rng.choice(["d", "e/d", "/e", "../d", "a"]), mtime=mtime))
            elif kind == "hardlink":
                # Mostly to a file written before (in this layer or a lower one).
                members.append(hardlink(path, rng.choice(files) if files and rng.random() < 0.9
                                        else rng.choice(NAMES)))
            elif kind == "whiteout":
                members.append(whiteout(path))
            else:
                members.append(opaque(path))
        layers.append(tar_bytes(*members))
    return layers


def tar2sqfs_problem(data: bytes) -> str | None:
    """What tar2sqfs would refuse in a tar (a path twice, an entry below a non-directory,
    a hardlink to no file); None when it builds the image."""
    kinds: dict[str, str] = {}
    links: list[tuple[str, str]] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        for info in archive:
            parts = info.name.split("/")
            for depth in range(1, len(parts)):
                parent = "/".join(parts[:depth])
                if kinds.setdefault(parent, "implicit") not in ("dir", "implicit"):
                    return f"{info.name} lies below the non-directory {parent}"
            known = kinds.get(info.name)
            if info.isdir() and known in (None, "implicit"):
                kinds[info.name] = "dir"
            elif known is not None:
                return f"{info.name} comes twice"
            else:
                kinds[info.name] = "link" if info.islnk() else "file" if info.isfile() else "other"
                if info.islnk():
                    links.append((info.name, info.linkname))
    for name, target in links:
        if kinds.get(target) != "file":
            return f"{name} links to {target}, which is no file"
    return None


@pytest.mark.parametrize("ahead_bytes", [prefetch.AHEAD_BYTES, 5],
                         ids=["data-read-ahead", "rest-handed-over"])
def test_generated_stacks_are_flattened_exactly_or_left_to_the_two_pass_flatten(
        ahead_bytes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # With 5 bytes, many files are more than the next layer may hold: the rest of that
    # layer is handed over to the flatten's thread at the first of them.
    monkeypatch.setattr(prefetch, "AHEAD_BYTES", ahead_bytes)
    rng = random.Random(20261128)
    outcomes = {"one pass": 0, "fallback": 0, "refused": 0}
    for _ in range(800):
        layers = random_stack(rng)
        if ahead_bytes == 5:
            assert_same_one_pass(layers)  # and the compiled one-pass flatten
        try:
            exact: Tree | None = two_passes(layers)
        except ContentRejected:
            exact = None
        out = io.BytesIO()
        try:
            streamed = stream_flat_tar([f"layer{n}" for n in range(len(layers))],
                                       functools.partial(_layer_stream, layers), out, policy=POLICY,
                                       max_data_bytes=1 << 40)
            # Whatever gets written, tar2sqfs builds it: a wrong guess must end in a
            # fallback, never in a failed conversion of a good image.
            assert tar2sqfs_problem(out.getvalue()) is None, layers
            streamed.verify()
        except SpeculationFailed:
            outcomes["fallback"] += 1
            continue
        except ContentRejected:
            assert exact is None, layers
            outcomes["refused"] += 1
            continue
        assert canonical(out.getvalue()) == exact, layers
        outcomes["one pass"] += 1
    # The generator reaches all three outcomes.
    assert min(outcomes.values()) > 50, outcomes
