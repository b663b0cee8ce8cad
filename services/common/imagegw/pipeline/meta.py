"""The Shifter meta file: the text the runtime reads beside `<id>.squashfs`.

`render_meta` is pure. ENTRY and CMD are written as the Python-list text the
Shifter runtime parses; values that would break the one-line-per-key format
(newlines, NULs) are refused rather than silently altered.
"""

from __future__ import annotations

from collections.abc import Iterable

from imagegw.domain.errors import ContentRejected
from imagegw.domain.model import ImageMetadata


def _one_line(value: str, what: str) -> str:
    if any(ch in value for ch in "\n\r\x00"):
        raise ContentRejected(
            f"image config {what} contains a newline or NUL and cannot be written to the meta file",
            hint="rebuild the image without control characters in that field",
        )
    return value


def _list_text(values: Iterable[str], what: str) -> str:
    items = list(values)
    for item in items:
        if "\x00" in item:
            raise ContentRejected(f"image config {what} contains a NUL byte")
    # repr() escapes quotes, backslashes and newlines, so the list stays on one line.
    return repr([str(item) for item in items])


def render_meta(
    image_format: str,
    metadata: ImageMetadata,
    *,
    user_acl: Iterable[int] = (),
    group_acl: Iterable[int] = (),
) -> bytes:
    """The meta file's bytes for an image of `image_format` with `metadata`."""
    lines = [f"FORMAT: {_one_line(image_format, 'format')}"]
    if metadata.entrypoint:
        lines.append(f"ENTRY: {_list_text(metadata.entrypoint, 'Entrypoint')}")
    if metadata.cmd:
        lines.append(f"CMD: {_list_text(metadata.cmd, 'Cmd')}")
    if metadata.workdir:
        lines.append(f"WORKDIR: {_one_line(metadata.workdir, 'WorkingDir')}")
    users = sorted(set(user_acl))
    groups = sorted(set(group_acl))
    if users:
        lines.append("USERACL: " + ",".join(str(int(uid)) for uid in users))
    if groups:
        lines.append("GROUPACL: " + ",".join(str(int(gid)) for gid in groups))
    for variable in metadata.env:
        if "=" not in variable:
            raise ContentRejected(f"image config Env entry {variable[:60]!r} has no '='")
        lines.append(f"ENV: {_one_line(variable, 'Env')}")
    return ("\n".join(lines) + "\n").encode("utf-8", errors="strict")


def parse_meta(text: str) -> dict[str, list[str]]:
    """Reads a meta file back into {KEY: [values...]} (for tests and admins' tools)."""
    result: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            result.setdefault(key, []).append(value)
    return result
