"""Layer merge semantics (OCI image-spec) and the flattened tar, without tar2sqfs."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path
from typing import BinaryIO

import pytest

from imagegw.domain.errors import ContentRejected
from imagegw.pipeline.decompress import open_layer
from imagegw.pipeline.flatten import FlatTree, index_layer, merge_layers, write_flat_tar
from imagegw.pipeline.members import MemberPolicy
from imagegw.pipeline.streaming import SpeculationFailed, stream_flat_tar
from tests.support.compiled_flatten import BUILT, assert_same_merge, assert_same_tar
from tests.support.layers import (
    compress,
    device,
    dir,
    file,
    hardlink,
    opaque,
    raw_member,
    symlink,
    tar_bytes,
    whiteout,
)
from tests.support.squashfs_tree import Node, read_tar, sha256, summary

POLICY = MemberPolicy()


def merge(*layers: bytes) -> FlatTree:
    """merge_layers over the layers' indexes; the compiled merge refuses the same."""
    indexes = [index_layer(io.BytesIO(data), layer=f"layer{number}", policy=POLICY)
               for number, data in enumerate(layers)]
    try:
        tree = merge_layers(indexes)
    except ContentRejected as error:
        assert_same_merge(indexes, error)
        raise
    assert_same_merge(indexes, None)
    return tree


def flatten(*layers: bytes) -> dict[str, Node]:
    """Index, merge and write the layers (uncompressed tars); the result read back.

    The one-pass flatten (newest first) runs on the same layers: it must give the same
    tree, or refuse to vouch for its result (SpeculationFailed) and leave it to this one;
    the compiled flatten (native_flat) must write the same bytes.
    """
    tree = merge(*layers)
    out = io.BytesIO()
    write_flat_tar(tree, lambda number: io.BytesIO(layers[number]), out)
    assert_same_tar([index_layer(io.BytesIO(data), layer=f"layer{number}", policy=POLICY)
                     for number, data in enumerate(layers)], layers, out.getvalue())
    out.seek(0)
    exact = read_tar(out)
    assert one_pass(*layers) in (exact, None)
    return exact


def one_pass(*layers: bytes) -> dict[str, Node] | None:
    """The one-pass flatten's tree, or None when it cannot prove its result exact."""
    out = io.BytesIO()
    try:
        stream_flat_tar([f"layer{number}" for number in range(len(layers))],
                        lambda number: io.BytesIO(layers[number]), out, policy=POLICY,
                        max_data_bytes=1 << 40).verify()
    except SpeculationFailed:
        return None
    out.seek(0)
    tree = read_tar(out)
    # Parents without an entry are made by tar2sqfs: root-owned 0755 directories.
    for path in list(tree):
        parts = path.split("/")
        for depth in range(1, len(parts)):
            tree.setdefault("/".join(parts[:depth]), Node("dir", 0o755))
    return tree


def test_the_compiled_flatten_is_built_in_ci() -> None:
    # CI runs scripts/setup, whose editable install builds it (setup.py): a missing
    # compiler or header must fail there, not silently leave the slow path and skip the
    # compiled side of every test here.
    if not BUILT and os.environ.get("CI"):
        pytest.fail("imagegw.pipeline.native._flat was not built (see setup.py)")
    if not BUILT:
        pytest.skip("the compiled flatten is not built here")


def F(data: bytes, mode: int = 0o644) -> tuple[str, int, str]:  # noqa: N802
    return ("file", mode, sha256(data))


def D(mode: int = 0o755) -> tuple[str, int, str]:  # noqa: N802
    return ("dir", mode, "")


def S(target: str) -> tuple[str, int, str]:  # noqa: N802
    return ("symlink", 0o777, target)


def test_whiteout_hides_a_lower_file() -> None:
    tree = flatten(tar_bytes(file("a", b"1"), file("b", b"2")), tar_bytes(whiteout("a")))
    assert summary(tree) == {"b": F(b"2")}


def test_whiteout_hides_a_lower_directory_with_its_subtree() -> None:
    tree = flatten(tar_bytes(dir("d"), file("d/x", b"1"), file("d/y/z", b"2"), file("k")),
                   tar_bytes(whiteout("d")))
    assert summary(tree) == {"k": F(b"")}


def test_whiteout_does_not_hide_an_entry_of_its_own_layer() -> None:
    tree = flatten(tar_bytes(file("a", b"old")), tar_bytes(file("a", b"new"), whiteout("a")))
    assert summary(tree) == {"a": F(b"new")}


def test_opaque_whiteout_hides_lower_directory_contents_but_keeps_same_layer_children() -> None:
    tree = flatten(tar_bytes(dir("d", 0o700), file("d/old", b"o"), dir("d/sub"), file("e")),
                   tar_bytes(dir("d", 0o750), file("d/new", b"n"), opaque("d")))
    assert summary(tree) == {"d": D(0o750), "d/new": F(b"n"), "e": F(b"")}


def test_opaque_marker_at_the_root_hides_every_lower_entry() -> None:
    tree = flatten(tar_bytes(file("a"), dir("b")), tar_bytes(opaque(""), file("c", b"c")))
    assert summary(tree) == {"c": F(b"c")}


def test_file_replaces_a_directory_and_its_subtree() -> None:
    tree = flatten(tar_bytes(dir("d"), file("d/x", b"1")), tar_bytes(file("d", b"f")))
    assert summary(tree) == {"d": F(b"f")}


def test_directory_replaces_a_file() -> None:
    tree = flatten(tar_bytes(file("d", b"f")), tar_bytes(dir("d", 0o711), file("d/x", b"1")))
    assert summary(tree) == {"d": D(0o711), "d/x": F(b"1")}


def test_directory_over_directory_updates_metadata_and_keeps_children() -> None:
    tree = flatten(tar_bytes(dir("d", 0o755), file("d/x", b"1")), tar_bytes(dir("d", 0o700)))
    assert summary(tree) == {"d": D(0o700), "d/x": F(b"1")}


def test_symlink_is_replaced_by_a_file_without_following_it() -> None:
    tree = flatten(tar_bytes(dir("real"), symlink("s", "real")), tar_bytes(file("s", b"f")))
    assert summary(tree) == {"real": D(), "s": F(b"f")}


def test_symlink_is_replaced_by_a_symlink() -> None:
    tree = flatten(tar_bytes(symlink("s", "one")), tar_bytes(symlink("s", "two")))
    assert summary(tree) == {"s": S("two")}


def test_hardlink_in_the_same_layer_shares_the_file() -> None:
    tree = flatten(tar_bytes(file("bin/a", b"exe", 0o755), hardlink("bin/b", "bin/a")))
    assert summary(tree) == {"bin": D(), "bin/a": F(b"exe", 0o755), "bin/b": F(b"exe", 0o755)}
    assert tree["bin/a"].inode == tree["bin/b"].inode


def test_hardlink_to_a_file_of_an_earlier_layer() -> None:
    tree = flatten(tar_bytes(file("a", b"lower")), tar_bytes(hardlink("b", "a")))
    assert summary(tree) == {"a": F(b"lower"), "b": F(b"lower")}
    assert tree["a"].inode == tree["b"].inode


def test_hardlink_keeps_the_old_bytes_when_its_target_is_later_replaced() -> None:
    tree = flatten(tar_bytes(file("a", b"old"), hardlink("b", "a")),
                   tar_bytes(file("a", b"new")))
    assert summary(tree) == {"a": F(b"new"), "b": F(b"old")}


def test_hardlink_keeps_the_old_bytes_when_its_target_is_whited_out() -> None:
    tree = flatten(tar_bytes(file("a", b"old"), hardlink("b", "a")), tar_bytes(whiteout("a")))
    assert summary(tree) == {"b": F(b"old")}


def test_hardlink_keeps_the_old_bytes_when_its_target_is_replaced_in_the_same_layer() -> None:
    tree = flatten(tar_bytes(file("a", b"old"), hardlink("b", "a"), file("a", b"new")))
    assert summary(tree) == {"a": F(b"new"), "b": F(b"old")}


def test_cross_layer_hardlink_keeps_lower_bytes_when_a_third_layer_replaces_its_target(
) -> None:
    tree = flatten(tar_bytes(file("a", b"base")), tar_bytes(hardlink("b", "a")),
                   tar_bytes(file("a", b"newest")))
    assert summary(tree) == {"a": F(b"newest"), "b": F(b"base")}


def test_cross_layer_hardlink_survives_a_later_whiteout_of_its_target() -> None:
    # Newest-first merges lose this one: the data must still come from layer 0.
    tree = flatten(tar_bytes(file("lib/real", b"payload", 0o755)),
                   tar_bytes(dir("bin"), hardlink("bin/alias", "lib/real")),
                   tar_bytes(whiteout("lib")))
    assert summary(tree) == {"bin": D(), "bin/alias": F(b"payload", 0o755)}


def test_cross_layer_hardlink_survives_a_later_opaque_directory_over_its_target() -> None:
    tree = flatten(tar_bytes(dir("d"), file("d/a", b"keep")),
                   tar_bytes(hardlink("b", "d/a")),
                   tar_bytes(dir("d"), opaque("d"), file("d/new", b"n")))
    assert summary(tree) == {"d": D(), "d/new": F(b"n"), "b": F(b"keep")}


def test_links_from_several_layers_to_one_lower_file_share_one_inode() -> None:
    tree = flatten(tar_bytes(file("a", b"shared")), tar_bytes(hardlink("b", "a")),
                   tar_bytes(hardlink("c", "b")))
    assert summary(tree) == {"a": F(b"shared"), "b": F(b"shared"), "c": F(b"shared")}
    assert tree["a"].inode == tree["b"].inode == tree["c"].inode


def test_hardlink_to_a_target_replaced_earlier_in_its_own_layer_gets_the_new_bytes() -> None:
    tree = flatten(tar_bytes(file("a", b"old")),
                   tar_bytes(file("a", b"new"), hardlink("b", "a")))
    assert summary(tree) == {"a": F(b"new"), "b": F(b"new")}
    assert tree["a"].inode == tree["b"].inode


def test_hardlink_to_a_symlink_becomes_a_copy_of_the_symlink() -> None:
    tree = flatten(tar_bytes(symlink("s", "/etc/hosts"), hardlink("t", "s")))
    assert summary(tree) == {"s": S("/etc/hosts"), "t": S("/etc/hosts")}


def test_hardlink_to_a_later_member_is_refused() -> None:
    with pytest.raises(ContentRejected, match="'b' is a hardlink to 'a', which does not exist"):
        merge(tar_bytes(hardlink("b", "a"), file("a", b"1")))


def test_hardlink_to_a_missing_member_is_refused() -> None:
    with pytest.raises(ContentRejected, match="does not exist"):
        merge(tar_bytes(file("x")), tar_bytes(hardlink("b", "nope")))


def test_hardlink_to_a_directory_is_refused() -> None:
    with pytest.raises(ContentRejected, match="hardlink to the directory 'd'"):
        merge(tar_bytes(dir("d"), hardlink("b", "d")))


def test_a_later_duplicate_in_one_layer_wins() -> None:
    tree = flatten(tar_bytes(file("a", b"first", 0o600), file("a", b"second", 0o644)))
    assert summary(tree) == {"a": F(b"second")}


def test_dot_slash_prefixed_names_match_plain_names_across_layers() -> None:
    tree = flatten(tar_bytes(dir("./etc"), file("./etc/a", b"1"), file("./etc/b", b"2")),
                   tar_bytes(whiteout("etc/a"), file("etc/b", b"3")))
    assert summary(tree) == {"etc": D(), "etc/b": F(b"3")}


def test_pax_non_ascii_and_long_names_survive() -> None:
    long = "/".join(["verzeichnis-ü"] * 12)
    tree = flatten(tar_bytes(file(f"{long}/日本語.txt", b"x"), symlink("ß", long)))
    assert tree[f"{long}/日本語.txt"].sha256 == sha256(b"x")
    assert tree["ß"].link == long


def test_member_below_a_symlinked_parent_lands_in_the_symlink_target() -> None:
    tree = flatten(tar_bytes(dir("usr/lib", 0o755), symlink("lib", "/usr/lib")),
                   tar_bytes(file("lib/libc.so", b"c")))
    assert summary(tree) == {"lib": S("/usr/lib"), "usr": D(), "usr/lib": D(),
                             "usr/lib/libc.so": F(b"c")}


def test_symlinked_parent_pointing_outside_is_resolved_within_the_root() -> None:
    tree = flatten(tar_bytes(symlink("evil", "../../../../etc"), file("evil/passwd", b"p")))
    assert summary(tree) == {"evil": S("../../../../etc"), "etc": D(), "etc/passwd": F(b"p")}


def test_whiteout_through_a_symlinked_parent_removes_the_resolved_entry() -> None:
    tree = flatten(tar_bytes(dir("real"), file("real/x", b"1"), symlink("alias", "real")),
                   tar_bytes(whiteout("alias/x")))
    assert summary(tree) == {"real": D(), "alias": S("real")}


def test_symlink_loop_is_refused() -> None:
    with pytest.raises(ContentRejected, match="symlink loop"):
        merge(tar_bytes(symlink("a", "b"), symlink("b", "a"), file("a/x")))


def test_member_below_a_regular_file_is_refused() -> None:
    with pytest.raises(ContentRejected, match="not a directory"):
        merge(tar_bytes(file("f"), file("f/x")))


def test_dropped_devices_are_counted_not_written() -> None:
    tree = merge(tar_bytes(device("dev/null"), file("a")))
    assert tree.dropped == 1
    assert sorted(tree.paths()) == ["a"]


def test_layers_without_surviving_data_are_not_read() -> None:
    layers = [tar_bytes(file("a", b"gone")), tar_bytes(file("b", b"kept")),
              tar_bytes(whiteout("a"), dir("d"), symlink("l", "b"))]
    tree = merge(*layers)
    opened: list[int] = []

    def open_layer(number: int) -> BinaryIO:
        opened.append(number)
        return io.BytesIO(layers[number])

    write_flat_tar(tree, open_layer, io.BytesIO())
    assert opened == [1]


def test_progress_counts_every_byte_of_file_data_once() -> None:
    layers = [tar_bytes(file("a", b"x" * 5000), hardlink("b", "a"), file("c", b"y" * 10))]
    tree = merge(*layers)
    counted: list[int] = []
    write_flat_tar(tree, lambda n: io.BytesIO(layers[n]), io.BytesIO(), on_bytes=counted.append)
    assert sum(counted) == tree.data_bytes == 5010


def test_layer_that_changed_since_indexing_is_refused() -> None:
    tree = merge(tar_bytes(file("a", b"12345")))
    changed = tar_bytes(file("a", b"123456"))
    with pytest.raises(ContentRejected, match="changed while it was converted"):
        write_flat_tar(tree, lambda n: io.BytesIO(changed), io.BytesIO())


def test_layer_that_ends_before_a_needed_member_is_refused() -> None:
    tree = merge(tar_bytes(file("a", b"1"), file("b", b"2")))
    shorter = tar_bytes(file("a", b"1"))
    with pytest.raises(ContentRejected, match="ends before member 'b'"):
        write_flat_tar(tree, lambda n: io.BytesIO(shorter), io.BytesIO())


# -- decompression ------------------------------------------------------------------


def write(tmp_path: Path, blob: bytes, name: str = "blob") -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_every_layer_compression_is_detected_and_read(tmp_path: Path, compression: str) -> None:
    data = tar_bytes(file("a", os.urandom(3 << 20)), file("b", b"b"))
    path = write(tmp_path, compress(data, compression))
    with open_layer(path, max_uncompressed=1 << 30) as stream:
        got = b"".join(iter(lambda: stream.read(1 << 20), b""))
    assert got == data


def test_concatenated_gzip_members_read_as_one_stream(tmp_path: Path) -> None:
    data = tar_bytes(file("a", b"1" * 3000), file("b", b"2"))
    blob = gzip.compress(data[:1024]) + gzip.compress(data[1024:]) + bytes(10)
    with open_layer(write(tmp_path, blob), max_uncompressed=1 << 20) as stream:
        assert b"".join(iter(lambda: stream.read(4096), b"")) == data


def test_zstd_with_several_frames_reads_as_one_stream(tmp_path: Path) -> None:
    data = tar_bytes(file("a", b"1" * 3000), file("b", b"2"))
    blob = compress(data[:2048], "zstd") + compress(data[2048:], "zstd")
    with open_layer(write(tmp_path, blob), max_uncompressed=1 << 20) as stream:
        assert b"".join(iter(lambda: stream.read(4096), b"")) == data


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_decompression_bomb_over_the_cap_is_refused(tmp_path: Path, compression: str) -> None:
    bomb = compress(tar_bytes(file("zeros", bytes(64 << 20))), compression)
    assert len(bomb) < 1 << 20
    path = write(tmp_path, bomb)
    with (pytest.raises(ContentRejected, match=r"layer sha256:bomb decompresses beyond the "
                        r"16777216-byte cap"),
          open_layer(path, max_uncompressed=16 << 20, layer="sha256:bomb") as stream):
        index_layer(stream, layer="sha256:bomb", policy=POLICY)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_truncated_compressed_layer_is_refused(tmp_path: Path, compression: str) -> None:
    blob = compress(tar_bytes(file("a", os.urandom(200_000))), compression)
    path = write(tmp_path, blob[: len(blob) - 100])
    with (pytest.raises(ContentRejected, match="truncated"),
          open_layer(path, max_uncompressed=1 << 30, layer="sha256:cut") as stream):
        index_layer(stream, layer="sha256:cut", policy=POLICY)


def test_corrupt_gzip_is_refused(tmp_path: Path) -> None:
    blob = bytearray(compress(tar_bytes(file("a", os.urandom(5000))), "gzip"))
    blob[40:60] = bytes(20)
    with (pytest.raises(ContentRejected, match="not valid gzip"),
          open_layer(write(tmp_path, bytes(blob)), max_uncompressed=1 << 30) as stream):
        index_layer(stream, layer="l", policy=POLICY)


def test_uncompressed_tar_cut_inside_a_member_is_refused(tmp_path: Path) -> None:
    data = tar_bytes(file("a", b"x" * 5000))[:3000]
    with (pytest.raises(ContentRejected, match="ends in the middle of a tar member"),
          open_layer(write(tmp_path, data), max_uncompressed=1 << 30) as stream):
        index_layer(stream, layer="l", policy=POLICY)


def test_raw_header_refusal_reaches_the_caller_through_merge() -> None:
    with pytest.raises(ContentRejected, match="'..'"):
        merge(raw_member("../escape", data=b"x") + bytes(1024))
