"""The Shifter meta file: the text the runtime reads beside `<name>.squashfs`.

`render_meta` is pure. Every value is written so that the runtime's parser
(`parse_ImageData` in Shifter's src/ImageData.c) reads back exactly the image's
value; a value that parser cannot be given is refused, naming the image field, so
the pull fails before anything is published. The parser's rules, as we rely on them:

- one `KEY: value` per line, split at the first ':'; the value is trimmed of
  C whitespace (space, \\t, \\n, \\v, \\f, \\r) at both ends; '#' starts a comment line;
- a value ending in '\\' continues on the next line: that '\\' is dropped and the
  next line's trimmed text is appended after one space, then the whole is trimmed;
  so a value that really ends in '\\' is written with one more '\\' and an empty line;
- ENTRY and CMD starting with `['` are a list: every item is the text between a
  pair of single quotes, taken literally (no escapes, so no item can hold a quote);
  any other ENTRY or CMD is one item, taken as it stands.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from imagegw.domain.errors import ContentRejected
from imagegw.domain.model import ImageMetadata

#: The characters C's isspace() accepts in the C locale: what the parser trims.
C_WHITESPACE = " \t\n\v\f\r"
_HINT = "rebuild the image with that value changed; Shifter's runtime could not read it"


def _refuse(field: str, why: str) -> ContentRejected:
    return ContentRejected(f"image config {field} {why}, which Shifter's meta file cannot "
                           "carry; nothing was published", hint=_HINT)


def _plain_value(value: str, field: str) -> str:
    """`value` as the text after `KEY: `, so that the parser reads back exactly `value`."""
    if "\n" in value:
        raise _refuse(field, "contains a newline")
    if "\x00" in value:
        raise _refuse(field, "contains a NUL byte")
    if value != value.strip(C_WHITESPACE):
        raise _refuse(field, f"{value[:60]!r} begins or ends with whitespace (the runtime "
                      "trims it)")
    if value.endswith("\\"):
        # Written "...\\\\" + empty line: the parser drops one '\\', joins the empty line
        # with a space and trims that space away, leaving the value's own '\\'.
        return value + "\\\n"
    return value


def _list_value(items: Sequence[str], field: str) -> str:
    """ENTRY/CMD text that the parser splits back into exactly `items`."""
    for index, item in enumerate(items, 1):
        if "\n" in item or "\x00" in item:
            raise _refuse(f"{field} item {index}", "contains a newline or NUL")
    if not any("'" in item for item in items):
        return "[" + ", ".join(f"'{item}'" for item in items) + "]"
    if len(items) > 1:
        quoted = next(i for i, item in enumerate(items, 1) if "'" in item)
        raise _refuse(f"{field} item {quoted}", "contains a single quote (') in a list of "
                      f"{len(items)} items")
    item = items[0]
    if item.startswith(("['", "[u'")):
        raise _refuse(field, f"{item[:60]!r} contains a single quote and starts like a list")
    return _plain_value(item, field)


def render_meta(
    image_format: str,
    metadata: ImageMetadata,
    *,
    user_acl: Iterable[int] = (),
    group_acl: Iterable[int] = (),
) -> bytes:
    """The meta file's bytes for an image of `image_format` with `metadata`."""
    lines = [f"FORMAT: {_plain_value(image_format, 'format')}"]
    if metadata.entrypoint:
        lines.append(f"ENTRY: {_list_value(metadata.entrypoint, 'Entrypoint')}")
    if metadata.cmd:
        lines.append(f"CMD: {_list_value(metadata.cmd, 'Cmd')}")
    if metadata.workdir:
        lines.append(f"WORKDIR: {_plain_value(metadata.workdir, 'WorkingDir')}")
    users = sorted(set(user_acl))
    groups = sorted(set(group_acl))
    if users:
        lines.append("USERACL: " + ",".join(str(int(uid)) for uid in users))
    if groups:
        lines.append("GROUPACL: " + ",".join(str(int(gid)) for gid in groups))
    for index, variable in enumerate(metadata.env, 1):
        if "=" not in variable:
            raise ContentRejected(f"image config Env entry {variable[:60]!r} has no '='")
        lines.append(f"ENV: {_plain_value(variable, f'Env entry {index}')}")
    try:
        return ("\n".join(lines) + "\n").encode("utf-8", errors="strict")
    except UnicodeEncodeError as exc:
        raise ContentRejected("image config holds text that is not valid Unicode "
                              "(a lone surrogate); nothing was published", hint=_HINT) from exc


def parse_meta(text: str) -> dict[str, list[str]]:
    """Reads a meta file back into {KEY: [raw values...]} by the runtime's line rules
    (comments, trimming, continued lines); ENTRY/CMD stay unsplit. For admins' tools
    and tests."""
    result: dict[str, list[str]] = {}
    key = ""
    parts: list[str] = []
    for line in text.split("\n"):
        if line.startswith("#"):
            continue
        if not parts:
            key, sep, line = line.partition(":")
            if not sep:
                continue
            key = key.strip(C_WHITESPACE)
        value = line.strip(C_WHITESPACE)
        continued = value.endswith("\\")
        parts.append(value[:-1].strip(C_WHITESPACE) if continued else value)
        if not continued:
            result.setdefault(key, []).append(" ".join(parts).strip(C_WHITESPACE))
            parts = []
    return result
