"""The meta file is what the Shifter runtime reads: every value reads back exactly through
the rules of Shifter's parser (tests/support/shifter_meta.py), or the pull is refused
with the image field named."""

import pytest

from imagegw.domain.errors import ContentRejected
from imagegw.domain.model import ImageMetadata
from imagegw.pipeline.meta import parse_meta, render_meta
from tests.support.shifter_meta import read_image_data


def _reads_back(meta: ImageMetadata, users=(), groups=()):
    data = read_image_data(render_meta("squashfs", meta, user_acl=users, group_acl=groups))
    assert data.format == "squashfs"
    assert data.env == list(meta.env)
    assert data.entry == (list(meta.entrypoint) if meta.entrypoint else None)
    assert data.cmd == (list(meta.cmd) if meta.cmd else None)
    assert data.workdir == (meta.workdir or None)
    assert data.uids == sorted(set(users)) and data.gids == sorted(set(groups))
    assert data.unknown_keys == []
    return data


def test_meta_file_has_shifter_keys_in_runtime_format():
    meta = ImageMetadata(env=("PATH=/usr/bin:/bin", "LANG=C.UTF-8"),
                         entrypoint=("/bin/sh", "-c"), cmd=("echo hi",), workdir="/work")
    text = render_meta("squashfs", meta, user_acl=(1001, 1000), group_acl=(100,)).decode()
    assert text.splitlines() == [
        "FORMAT: squashfs",
        "ENTRY: ['/bin/sh', '-c']",
        "CMD: ['echo hi']",
        "WORKDIR: /work",
        "USERACL: 1000,1001",
        "GROUPACL: 100",
        "ENV: PATH=/usr/bin:/bin",
        "ENV: LANG=C.UTF-8",
    ]
    _reads_back(meta, (1001, 1000), (100,))


@pytest.mark.parametrize("meta", [
    # A quote in the only item: written as one plain item, not a list.
    ImageMetadata(entrypoint=("echo 'hi'",), cmd=("it's",)),
    # Backslashes, tabs, inner and trailing spaces inside list items.
    ImageMetadata(entrypoint=("C:\\dir\\", "a\tb", " padded  "), cmd=("\\n", "")),
    # Env values ending in one or two backslashes, with tabs and backslashes inside.
    ImageMetadata(env=("A=x\\", "B=y\\\\", "C=\ttab\tin", "D=back\\slash", "E=")),
    ImageMetadata(workdir="/odd\\"),
    ImageMetadata(env=("QUOTES='single' \"double\"",), cmd=("sh", "-c", "echo \"$A\"")),
    ImageMetadata(entrypoint=("ünïcode ✓",), env=("LANG=ünï",)),
    ImageMetadata(cmd=("ends with backslash and quote '\\",)),
])
def test_awkward_values_read_back_exactly(meta):
    _reads_back(meta, (1000,), (100, 200))


def test_parse_meta_follows_the_runtime_line_rules():
    meta = ImageMetadata(env=("A=x\\", "B=\t1"), workdir="/w")
    assert parse_meta(render_meta("squashfs", meta).decode()) == {
        "FORMAT": ["squashfs"], "WORKDIR": ["/w"], "ENV": ["A=x\\", "B=\t1"]}


def test_public_image_has_no_acl_lines():
    text = render_meta("squashfs", ImageMetadata(env=("A=1",))).decode()
    assert "USERACL" not in text and "GROUPACL" not in text


@pytest.mark.parametrize(("meta", "field"), [
    (ImageMetadata(env=("A=1\nENV: EVIL=1",)), "Env entry 1"),
    (ImageMetadata(env=("A=1", "B=trailing ")), "Env entry 2"),
    (ImageMetadata(env=("A=tab\t",)), "Env entry 1"),
    (ImageMetadata(workdir="/x\nUSERACL: 0"), "WorkingDir"),
    (ImageMetadata(workdir=" /lead"), "WorkingDir"),
    (ImageMetadata(env=("NOEQUALS",)), "Env entry"),
    (ImageMetadata(cmd=("a\x00b",)), "Cmd item 1"),
    (ImageMetadata(entrypoint=("sh", "-c", "echo 'b'")), "Entrypoint item 3"),
    (ImageMetadata(entrypoint=("it's ",)), "Entrypoint"),
    (ImageMetadata(cmd=("['x', 'y']",)), "Cmd"),
])
def test_values_the_format_cannot_carry_are_refused_naming_the_field(meta, field):
    with pytest.raises(ContentRejected, match=field):
        render_meta("squashfs", meta)
