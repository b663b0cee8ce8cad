"""A reader of meta files that follows the rules of Shifter's runtime parser
(`parse_ImageData` -> `shifter_parseConfig` and `_ImageData_assign` in Shifter's
src/ImageData.c and src/utility.c), written from reading them, for tests.

It works on bytes the way the C code does: lines end at '\\n' only; '#' at the start
of a line skips it; the key is the text before the first ':'; keys and values are
trimmed of C whitespace; a value ending in '\\' goes on with the next line, joined
by one space; ENV appends; ENTRY/CMD that start with `['` or `[u'` are split into
the texts between pairs of single quotes (and must end in ']', with the quotes
paired, or the parser fails with "Malformed JSON"); other ENTRY/CMD values are one
item; USERACL/GROUPACL are comma-separated numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

C_SPACE = b" \t\n\v\f\r"


class MalformedMeta(ValueError):
    """What makes parse_ImageData return an error."""


@dataclass
class ShifterImageData:
    format: str = ""
    env: list[str] = field(default_factory=list)
    entry: list[str] | None = None
    cmd: list[str] | None = None
    workdir: str | None = None
    uids: list[int] = field(default_factory=list)
    gids: list[int] = field(default_factory=list)
    unknown_keys: list[str] = field(default_factory=list)


def _trim(text: bytes) -> bytes:
    return text.strip(C_SPACE)


def _split_list(value: bytes) -> list[bytes]:
    """Shifter's split_json_array: texts between pairs of quotes in value[1:-1]."""
    body = value[1:-1]
    if body.count(b"'") % 2 or not value.endswith(b"]") or len(value) < 3:
        raise MalformedMeta(f"Malformed JSON: {value!r}")
    return body.split(b"'")[1::2]


def _items(value: bytes) -> list[bytes]:
    if value.startswith((b"['", b"[u'")):
        return _split_list(value)
    return [value]


def _ids(value: bytes) -> list[int]:
    ids = []
    for part in value.split(b","):
        part = _trim(part)
        if part.isdigit():
            ids.append(int(part))
    return ids


def _assign(data: ShifterImageData, key: bytes, value: bytes) -> None:
    text = value.decode("utf-8")
    if key == b"FORMAT":
        data.format = text
    elif key == b"ENV":
        data.env.append(text)
    elif key == b"ENTRY":
        data.entry = [item.decode("utf-8") for item in _items(value)]
    elif key == b"CMD":
        data.cmd = [item.decode("utf-8") for item in _items(value)]
    elif key == b"WORKDIR":
        data.workdir = text
    elif key == b"USERACL":
        data.uids = _ids(value)
    elif key == b"GROUPACL":
        data.gids = _ids(value)
    else:
        data.unknown_keys.append(key.decode("utf-8"))


def read_image_data(raw: bytes) -> ShifterImageData:
    """What the runtime makes of the meta file `raw`."""
    data = ShifterImageData()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the text after the final newline is no line for getline
    key = b""
    pending: list[bytes] = []
    for line in lines:
        if line.startswith(b"#"):
            continue
        if not pending:
            key, colon, line = line.partition(b":")
            if not colon:
                continue
            key = _trim(key)
        value = _trim(line)
        if value.endswith(b"\\"):
            pending.append(_trim(value[:-1]))
            continue
        pending.append(value)
        _assign(data, key, _trim(b" ".join(pending)))
        pending = []
    # A value still continued at the end of the file is never assigned (as in C).
    return data
