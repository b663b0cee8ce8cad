"""The meta file is what the Shifter runtime reads: exact format, no broken lines."""

import ast

import pytest

from imagegw.domain.errors import ContentRejected
from imagegw.domain.model import ImageMetadata
from imagegw.pipeline.meta import parse_meta, render_meta


def test_meta_file_has_shifter_keys_in_runtime_format():
    meta = ImageMetadata(env=("PATH=/usr/bin:/bin", "LANG=C.UTF-8"),
                         entrypoint=("/bin/sh", "-c"), cmd=("echo 'hi'",), workdir="/work")
    text = render_meta("squashfs", meta, user_acl=(1001, 1000), group_acl=(100,)).decode()
    assert text.splitlines() == [
        "FORMAT: squashfs",
        "ENTRY: ['/bin/sh', '-c']",
        "CMD: [\"echo 'hi'\"]",
        "WORKDIR: /work",
        "USERACL: 1000,1001",
        "GROUPACL: 100",
        "ENV: PATH=/usr/bin:/bin",
        "ENV: LANG=C.UTF-8",
    ]


def test_entrypoint_with_quotes_and_newlines_stays_one_parseable_line():
    meta = ImageMetadata(entrypoint=("sh", "-c", 'echo "a"\necho \'b\''))
    parsed = parse_meta(render_meta("squashfs", meta).decode())
    assert len(parsed["ENTRY"]) == 1
    assert ast.literal_eval(parsed["ENTRY"][0]) == list(meta.entrypoint)


def test_public_image_has_no_acl_lines():
    text = render_meta("squashfs", ImageMetadata(env=("A=1",))).decode()
    assert "USERACL" not in text and "GROUPACL" not in text


@pytest.mark.parametrize("meta", [
    ImageMetadata(env=("A=1\nENV: EVIL=1",)),
    ImageMetadata(workdir="/x\nUSERACL: 0"),
    ImageMetadata(env=("NOEQUALS",)),
    ImageMetadata(cmd=("a\x00b",)),
])
def test_values_that_would_break_the_format_are_refused(meta):
    with pytest.raises(ContentRejected):
        render_meta("squashfs", meta)
