"""One crafted tarball per hostile-member rule (members.py), read through index_layer."""

from __future__ import annotations

import io
import logging

import pytest

from imagegw.domain.errors import ContentRejected
from imagegw.pipeline.flatten import LayerIndex, index_layer
from imagegw.pipeline.members import Kind, MarkerKind, MemberPolicy, sanitize_mode
from tests.support.layers import (
    Member,
    device,
    dir,
    fifo,
    file,
    hardlink,
    opaque,
    raw_member,
    symlink,
    tar_bytes,
    whiteout,
)

LAYER = "sha256:" + "ab" * 32


def index(*entries: Member | bytes, keep_setuid: bool = False) -> LayerIndex:
    return index_layer(io.BytesIO(tar_bytes(*entries)), layer=LAYER,
                       policy=MemberPolicy(keep_setuid=keep_setuid))


def paths(layer: LayerIndex) -> list[str]:
    return [entry.path for entry in layer.entries]


def test_leading_dot_slash_is_stripped() -> None:
    assert paths(index(file("./etc/hosts"), dir("./usr/"))) == ["etc/hosts", "usr"]


def test_absolute_names_are_made_relative() -> None:
    assert paths(index(raw_member("/etc/passwd", data=b"x"))) == ["etc/passwd"]


def test_double_slashes_and_dot_components_collapse() -> None:
    assert paths(index(raw_member("usr//./lib/./x", data=b"x"))) == ["usr/lib/x"]


def test_dot_dot_component_is_refused_naming_layer_and_member() -> None:
    with pytest.raises(ContentRejected) as caught:
        index(raw_member("usr/../../etc/shadow", data=b"x"))
    assert LAYER in str(caught.value)
    assert "usr/../../etc/shadow" in str(caught.value)
    assert "'..'" in str(caught.value)


def test_hardlink_target_with_dot_dot_is_refused() -> None:
    with pytest.raises(ContentRejected, match="hardlink to '../etc/shadow'"):
        index(file("a"), raw_member("b", type=b"1", linkname="../etc/shadow"))


def test_name_with_nul_is_refused() -> None:
    with pytest.raises(ContentRejected, match="NUL"):
        index(raw_member("x", pax={"path": b"etc/pass\x00wd"}, data=b"x"))


def test_name_with_newline_is_refused() -> None:
    with pytest.raises(ContentRejected, match="newline"):
        index(file("etc/evil\nname"))


def test_name_longer_than_4096_bytes_is_refused() -> None:
    name = "/".join(["d" * 200] * 21)  # 4220 bytes, every component short
    with pytest.raises(ContentRejected, match="longer than 4096 bytes"):
        index(file(name))


def test_component_longer_than_255_bytes_is_refused() -> None:
    with pytest.raises(ContentRejected, match="component longer than 255 bytes"):
        index(file("usr/" + "c" * 256))


def test_whiteout_is_a_marker_for_its_sibling() -> None:
    layer = index(whiteout("usr/share/doc"), file("usr/share/x"))
    assert layer.markers == [(MarkerKind.WHITEOUT, "usr/share/doc")]
    assert paths(layer) == ["usr/share/x"]


def test_opaque_marker_names_its_directory() -> None:
    layer = index(opaque("var/cache"))
    assert layer.markers == [(MarkerKind.OPAQUE, "var/cache")]
    assert layer.entries == []


def test_whiteout_naming_dot_dot_is_refused() -> None:
    with pytest.raises(ContentRejected, match="whiteout"):
        index(file("etc/.wh.."))


def test_aufs_metadata_entries_are_dropped() -> None:
    layer = index(dir(".wh..wh.plnk"), file(".wh..wh.aufs"))
    assert (layer.entries, layer.markers, layer.dropped) == ([], [], 2)


def test_devices_fifos_and_unknown_types_are_dropped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="imagegw.pipeline.members")
    layer = index(device("dev/null"), device("dev/sda", block=True), fifo("run/fifo"),
                  raw_member("vol", type=b"V"), file("kept"))
    assert paths(layer) == ["kept"]
    assert layer.dropped == 4
    assert "dev/sda" in caplog.text and "block device" in caplog.text


def test_root_entry_is_dropped_so_the_root_stays_ours() -> None:
    layer = index(dir("./", 0o777), file("a"))
    assert (paths(layer), layer.dropped) == (["a"], 1)


def test_setuid_and_setgid_are_cleared_and_sticky_kept() -> None:
    layer = index(file("bin/su", b"x", 0o6755), dir("tmp", 0o1777))
    assert [entry.mode for entry in layer.entries] == [0o755, 0o1777]


def test_setuid_is_kept_when_the_site_asks() -> None:
    layer = index(file("bin/su", b"x", 0o4755), keep_setuid=True)
    assert layer.entries[0].mode == 0o4755


def test_mode_is_masked_to_permission_bits() -> None:
    assert sanitize_mode(0o100644, keep_setuid=True) == 0o644
    layer = index(raw_member("f", mode=0o170755, data=b"x"))
    assert layer.entries[0].mode == 0o755


def test_symlink_with_empty_target_is_refused() -> None:
    with pytest.raises(ContentRejected, match="empty target"):
        index(raw_member("l", type=b"2", linkname=b""))


def test_symlink_targets_are_kept_as_stored() -> None:
    layer = index(symlink("etc/localtime", "/usr/share/zoneinfo/UTC"), symlink("up", "../.."))
    assert [(e.kind, e.link) for e in layer.entries] == [
        (Kind.SYMLINK, "/usr/share/zoneinfo/UTC"), (Kind.SYMLINK, "../..")]


def test_hardlink_target_is_normalised() -> None:
    layer = index(file("bin/a", b"x"), hardlink("bin/b", "./bin//a"))
    assert layer.entries[1][:2] == ("bin/b", Kind.HARDLINK)
    assert layer.entries[1].link == "bin/a"


def test_layer_index_survives_a_json_round_trip() -> None:
    import json

    layer = index(file("a", b"1"), whiteout("b"), symlink("c", "a"), hardlink("d", "a"))
    again = LayerIndex.from_json(json.loads(json.dumps(layer.to_json())))
    assert again == layer


def test_owner_access_gives_the_owner_what_enroot_import_gives() -> None:
    entries = (file("shadow", mode=0o000), file("tool", mode=0o011), dir("ro", 0o555),
               file("plain", mode=0o644), symlink("link", "plain"))
    plain = index_layer(io.BytesIO(tar_bytes(*entries)), layer=LAYER, policy=MemberPolicy())
    owned = index_layer(io.BytesIO(tar_bytes(*entries)), layer=LAYER,
                        policy=MemberPolicy(owner_access=True))
    assert [e.mode for e in plain.entries] == [0o000, 0o011, 0o555, 0o644, 0o777]
    assert [e.mode for e in owned.entries] == [0o400, 0o511, 0o755, 0o644, 0o777]
