"""The one audited place for the rules on hostile layer members.

Pure functions: name normalisation and refusal (`..`, NUL, newline, lengths), whiteout and
opaque-marker classification, dropped member types, and mode/owner sanitising. `admit`
applies every rule to one raw member and says what the flattener should do with it.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import NoReturn

from imagegw.domain.errors import ContentRejected

from .tarstream import (
    BLOCKDEV,
    CHARDEV,
    DIRECTORY,
    FIFO,
    HARDLINK,
    REGULAR,
    SYMLINK,
    RawMember,
)

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
#: aufs bookkeeping entries (".wh..wh.plnk", ...): never content.
WHITEOUT_META_PREFIX = ".wh..wh."
MAX_NAME_BYTES = 4096
MAX_COMPONENT_BYTES = 255
#: The latest mtime kept (the most a ustar header holds, in the year 2242); later ones are
#: clamped to it, as the canonical tar would clamp them anyway.
MAX_MTIME = 8**11 - 1
#: Every output entry belongs to root (Shifter builds images with -all-root).
OWNER_UID = 0
OWNER_GID = 0

_HOSTILE_HINT = "the layer is hostile or corrupt; this image cannot be converted"

__all__ = [
    "Kind", "MemberPolicy", "Admitted", "Marker", "Dropped", "admit", "normalize_name",
    "normalize_hardlink_target", "name_problem", "check_symlink_target", "member_kind",
    "classify_marker", "sanitize_mode", "OWNER_UID", "OWNER_GID",
]


class Kind(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"


class MarkerKind(enum.StrEnum):
    WHITEOUT = "whiteout"
    OPAQUE = "opaque"


@dataclass(frozen=True)
class MemberPolicy:
    """Site choices for member rules; everything else is fixed."""

    keep_setuid: bool = False
    #: Give every entry's owner access as `enroot import` does (it unpacks images as the
    #: user): read, and execute where anyone has it, on files; rwx on directories.
    owner_access: bool = False


@dataclass(frozen=True, slots=True)
class Admitted:
    """A member that becomes part of the image, with its sanitised metadata."""

    path: str
    kind: Kind
    mode: int
    mtime: int
    size: int
    #: Symlink target (as stored) or normalised hardlink target; "" otherwise.
    link: str


@dataclass(frozen=True, slots=True)
class Marker:
    """A whiteout (hides `path` of lower layers) or an opaque marker (empties dir `path`)."""

    kind: MarkerKind
    path: str


@dataclass(frozen=True, slots=True)
class Dropped:
    reason: str


def admit(
    member: RawMember, *, layer: str, policy: MemberPolicy
) -> Admitted | Marker | Dropped:
    """Applies every member rule; raises ContentRejected for hostile members."""
    path = normalize_name(member.name, layer=layer)
    marker = classify_marker(path, layer=layer)
    if marker is not None:
        return marker
    if path.rpartition("/")[2].startswith(WHITEOUT_META_PREFIX):
        return _drop(layer, member, "an aufs metadata entry")
    kind = member_kind(member.type)
    if kind is None:
        return _drop(layer, member, _type_description(member.type))
    if not path:
        if kind is not Kind.DIR:
            return _drop(layer, member, "a non-directory entry for the image root")
        return _drop(layer, member, "the image root (the root is always 0755, root-owned)")
    link = ""
    if kind is Kind.HARDLINK:
        link = normalize_hardlink_target(member.linkname, layer=layer, member=path)
    elif kind is Kind.SYMLINK:
        link = check_symlink_target(member.linkname, layer=layer, member=path)
    return Admitted(
        path=path,
        kind=kind,
        mode=_with_owner_access(sanitize_mode(member.mode, keep_setuid=policy.keep_setuid),
                                kind, policy),
        mtime=min(max(member.mtime, 0), MAX_MTIME),
        size=member.size if kind is Kind.FILE else 0,
        link=link,
    )


def normalize_name(name: str, *, layer: str) -> str:
    """A member name as a clean relative path ("" is the root).

    Leading "/" and "./" are removed (absolute names are neutralised), "//" and "."
    collapse; "..", NUL, newline and over-long names or components are refused.
    """
    problem = name_problem(name)
    if problem:
        _refuse(layer, name, problem)
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def normalize_hardlink_target(target: str, *, layer: str, member: str) -> str:
    """A hardlink target is a member name: the same rules apply, and it may not be empty."""
    problem = name_problem(target)
    if problem:
        _refuse(layer, member, f"is a hardlink to {target!r}, which {problem}")
    normalized = normalize_name(target, layer=layer)
    if not normalized:
        _refuse(layer, member, "is a hardlink without a target")
    return normalized


def name_problem(name: str) -> str | None:
    """Why a member name is refused, or None when it is acceptable."""
    if "\0" in name:
        return "contains a NUL byte"
    if "\n" in name:
        return "contains a newline"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    for part in name.split("/"):
        if part == "..":
            return "has a '..' component"
        if len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES:
            return f"has a component longer than {MAX_COMPONENT_BYTES} bytes"
    return None


def check_symlink_target(target: str, *, layer: str, member: str) -> str:
    """Symlink targets are stored as they are (resolved at run time, inside the
    container); only what squashfs cannot hold is refused."""
    if not target:
        _refuse(layer, member, "is a symlink with an empty target")
    if "\0" in target:
        _refuse(layer, member, "is a symlink whose target contains NUL")
    if len(target.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        _refuse(layer, member, f"is a symlink whose target is longer than {MAX_NAME_BYTES} bytes")
    return target


def member_kind(type_flag: str) -> Kind | None:
    """The kind of a tar type flag; None for types we drop (devices, fifos, unknown)."""
    return _KINDS.get(type_flag)


_KINDS = {REGULAR: Kind.FILE, DIRECTORY: Kind.DIR, SYMLINK: Kind.SYMLINK, HARDLINK: Kind.HARDLINK}


def classify_marker(path: str, *, layer: str) -> Marker | None:
    """Whiteout (".wh.<name>") or opaque marker (".wh..wh..opq"); None for content."""
    parent, _, base = path.rpartition("/")
    if not base.startswith(WHITEOUT_PREFIX):
        return None
    if base == OPAQUE_MARKER:
        return Marker(MarkerKind.OPAQUE, parent)
    if base.startswith(WHITEOUT_META_PREFIX):
        return None  # aufs metadata: admit() drops it
    hidden = base[len(WHITEOUT_PREFIX) :]
    if hidden in ("", ".", ".."):
        _refuse(layer, path, "is a whiteout that names no sibling")
    return Marker(MarkerKind.WHITEOUT, f"{parent}/{hidden}" if parent else hidden)


def sanitize_mode(mode: int, *, keep_setuid: bool) -> int:
    """Permission bits only; setuid/setgid cleared unless the site keeps them (sticky kept)."""
    mode &= 0o7777
    if not keep_setuid:
        mode &= ~0o6000
    return mode


def _with_owner_access(mode: int, kind: Kind, policy: MemberPolicy) -> int:
    if not policy.owner_access or kind is Kind.SYMLINK:
        return mode
    if kind is Kind.DIR:
        return mode | 0o700
    return mode | 0o400 | (0o100 if mode & 0o111 else 0)


def _refuse(layer: str, name: str, problem: str) -> NoReturn:
    if len(name) > 200:
        name = name[:200] + "..."
    raise ContentRejected(f"layer {layer}: member {name!r} {problem}", hint=_HOSTILE_HINT)


def _drop(layer: str, member: RawMember, what: str) -> Dropped:
    log.info("layer %s: dropped member %r: %s", layer, member.name, what)
    return Dropped(what)


def _type_description(type_flag: str) -> str:
    names = {CHARDEV: "a character device", BLOCKDEV: "a block device", FIFO: "a fifo"}
    return names.get(type_flag, f"an unsupported member type {type_flag!r}")
