"""Flattens an image's layers into one canonical tar stream, with OCI layer semantics.

Three steps: `index_layer` reads one layer's headers (data skipped) into plain data,
`merge_layers` simulates the layers on an in-memory tree (whiteouts, opaque dirs,
symlinked parents resolved within the root, hardlink groups), and `write_flat_tar`
streams the surviving file data out of the layers, each decompressed once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple, NoReturn

from imagegw.domain.errors import ContentRejected

from .members import Admitted, Kind, Marker, MarkerKind, MemberPolicy, admit, normalize_name
from .tarstream import REGULAR, TarReader, TarWriter

log = logging.getLogger(__name__)

#: Symlinks followed while resolving one path, as Linux and containerd allow.
MAX_SYMLINK_HOPS = 40
IMPLICIT_DIR_MODE = 0o755

__all__ = [
    "Entry", "LayerIndex", "FileData", "Node", "FlatTree", "index_layer", "merge_layers",
    "write_flat_tar", "MAX_SYMLINK_HOPS",
]


class Entry(NamedTuple):
    """One admitted member of a layer, in member order."""

    path: str
    kind: Kind
    mode: int
    mtime: int
    size: int
    #: Symlink target as stored, or the normalised hardlink target.
    link: str
    #: Position of the member in the layer's tar (TarReader ordinal).
    ordinal: int
    #: Offset of the member's data in the decompressed layer (-1: not known).
    offset: int = -1


@dataclass
class LayerIndex:
    """What one layer does to the file system; plain data (see to_json)."""

    layer: str
    entries: list[Entry] = field(default_factory=list)
    #: Whiteouts and opaque markers, in member order.
    markers: list[tuple[MarkerKind, str]] = field(default_factory=list)
    dropped: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "entries": [list(entry) for entry in self.entries],
            "markers": [list(marker) for marker in self.markers],
            "dropped": self.dropped,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerIndex:
        return cls(
            layer=data["layer"],
            entries=[
                Entry(path, Kind(kind), mode, mtime, size, link, ordinal, offset)
                for path, kind, mode, mtime, size, link, ordinal, offset in data["entries"]
            ],
            markers=[(MarkerKind(kind), path) for kind, path in data["markers"]],
            dropped=data["dropped"],
        )


def index_layer(stream: BinaryIO, *, layer: str, policy: MemberPolicy) -> LayerIndex:
    """One pass over a decompressed layer's headers; member data is skipped."""
    index = LayerIndex(layer=layer)
    for member in TarReader(stream, layer=layer):
        result = admit(member, layer=layer, policy=policy)
        if isinstance(result, Admitted):
            index.entries.append(Entry(result.path, result.kind, result.mode, result.mtime,
                                       result.size, result.link, member.ordinal,
                                       member.offset))
        elif isinstance(result, Marker):
            index.markers.append((result.kind, result.path))
        else:
            index.dropped += 1
    return index


@dataclass(eq=False, slots=True)
class FileData:
    """The bytes of a regular file: one member of one layer, shared by a link group."""

    layer: int
    ordinal: int
    #: The member's normalised name in its layer (checked again when the data is read).
    member: str
    size: int
    mode: int
    mtime: int


class Node:
    """A node of the merged tree; regular files point at their FileData."""

    __slots__ = ("kind", "mode", "mtime", "link", "data", "children")

    def __init__(self, kind: Kind, mode: int, mtime: int, *, link: str = "",
                 data: FileData | None = None) -> None:
        self.kind = kind
        self.mode = mode
        self.mtime = mtime
        self.link = link
        self.data = data
        self.children: dict[str, Node] = {} if kind is Kind.DIR else _NO_CHILDREN

    def __repr__(self) -> str:
        return f"Node({self.kind.value}, {self.mode:o}, link={self.link!r}, data={self.data})"


_NO_CHILDREN: dict[str, Node] = {}


@dataclass
class FlatTree:
    """The surviving file system: every path in parents-first, sorted order."""

    layers: list[str]
    directories: list[tuple[str, Node]]
    symlinks: list[tuple[str, Node]]
    #: Link groups: the data and every surviving name that shares it (first is written).
    files: list[tuple[FileData, list[str]]]
    dropped: int = 0

    @property
    def data_bytes(self) -> int:
        return sum(data.size for data, _ in self.files)

    @property
    def hardlinks(self) -> int:
        return sum(len(names) - 1 for _, names in self.files)

    def paths(self) -> dict[str, Node | FileData]:
        """Every surviving path (for inspection and tests)."""
        found: dict[str, Node | FileData] = dict(self.directories + self.symlinks)
        for data, names in self.files:
            found.update(dict.fromkeys(names, data))
        return found


def merge_layers(indexes: Sequence[LayerIndex]) -> FlatTree:
    """Applies the layers oldest first; pure (no I/O)."""
    root = Node(Kind.DIR, IMPLICIT_DIR_MODE, 0)
    for number, index in enumerate(indexes):
        merger = _LayerMerge(root, number, index.layer)
        for kind, path in index.markers:
            merger.apply_marker(kind, path)
        for entry in index.entries:
            merger.apply_entry(entry)
    return _collect(root, [index.layer for index in indexes],
                    sum(index.dropped for index in indexes))


class _LayerMerge:
    """Applies one layer's markers and entries to the tree."""

    def __init__(self, root: Node, number: int, layer: str) -> None:
        self.root = root
        self.number = number
        self.layer = layer

    def apply_marker(self, kind: MarkerKind, path: str) -> None:
        if kind is MarkerKind.OPAQUE:
            directory = self._resolve_dir(path, path, create=False)
            if directory is not None:
                directory.children.clear()
            return
        parent_path, _, name = path.rpartition("/")
        parent = self._resolve_dir(parent_path, path, create=False)
        if parent is not None:
            parent.children.pop(name, None)

    def apply_entry(self, entry: Entry) -> None:
        parent_path, _, name = entry.path.rpartition("/")
        parent = self._resolve_dir(parent_path, entry.path, create=True)
        assert parent is not None
        existing = parent.children.get(name)
        if entry.kind is Kind.DIR:
            if existing is not None and existing.kind is Kind.DIR:
                existing.mode, existing.mtime = entry.mode, entry.mtime
            else:
                parent.children[name] = Node(Kind.DIR, entry.mode, entry.mtime)
        elif entry.kind is Kind.FILE:
            data = FileData(self.number, entry.ordinal, entry.path, entry.size, entry.mode,
                            entry.mtime)
            parent.children[name] = Node(Kind.FILE, entry.mode, entry.mtime, data=data)
        elif entry.kind is Kind.SYMLINK:
            parent.children[name] = Node(Kind.SYMLINK, 0o777, entry.mtime, link=entry.link)
        else:
            parent.children[name] = self._hardlink(entry)

    def _hardlink(self, entry: Entry) -> Node:
        parent_path, _, name = entry.link.rpartition("/")
        parent = self._resolve_dir(parent_path, entry.link, create=False)
        target = None if parent is None else parent.children.get(name)
        if target is None:
            self._reject(entry.path, f"is a hardlink to {entry.link!r}, which does not exist "
                         "at that point (missing, or only later in the layer)")
        if target.kind is Kind.DIR:
            self._reject(entry.path, f"is a hardlink to the directory {entry.link!r}")
        if target.kind is Kind.SYMLINK:
            return Node(Kind.SYMLINK, 0o777, target.mtime, link=target.link)
        return Node(Kind.FILE, target.mode, target.mtime, data=target.data)

    def _resolve_dir(self, path: str, member: str, *, create: bool) -> Node | None:
        """The directory at `path`, following symlinks confined to the image root.

        Absolute symlink targets start at the image root and ".." stops at the root
        (as containerd's securejoin does). Missing directories are created when
        `create`, else None is returned; so is a non-directory when not creating.
        """
        stack = [self.root]
        pending = path.split("/")[::-1] if path else []
        hops = 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            child = stack[-1].children.get(part)
            if child is None:
                if not create:
                    return None
                child = Node(Kind.DIR, IMPLICIT_DIR_MODE, 0)
                stack[-1].children[part] = child
            elif child.kind is Kind.SYMLINK:
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    self._reject(member, f"lies below more than {MAX_SYMLINK_HOPS} symlinks "
                                 "(a symlink loop)")
                if child.link.startswith("/"):
                    del stack[1:]
                pending.extend(child.link.split("/")[::-1])
                continue
            elif child.kind is not Kind.DIR:
                if not create:
                    return None
                self._reject(member, f"lies below {part!r}, which is not a directory")
            stack.append(child)
        return stack[-1]

    def _reject(self, member: str, problem: str) -> NoReturn:
        raise ContentRejected(
            f"layer {self.layer}: member {member!r} {problem}",
            hint="the layer is hostile or corrupt; this image cannot be converted",
        )


def _collect(root: Node, layers: list[str], dropped: int) -> FlatTree:
    directories: list[tuple[str, Node]] = []
    symlinks: list[tuple[str, Node]] = []
    groups: dict[int, tuple[FileData, list[str]]] = {}
    stack: list[tuple[str, Node]] = [("", root)]
    while stack:
        prefix, directory = stack.pop()
        subdirs = []
        for name in sorted(directory.children):
            node = directory.children[name]
            path = f"{prefix}{name}"
            if node.kind is Kind.DIR:
                directories.append((path, node))
                subdirs.append((path + "/", node))
            elif node.kind is Kind.SYMLINK:
                symlinks.append((path, node))
            else:
                assert node.data is not None
                groups.setdefault(id(node.data), (node.data, []))[1].append(path)
        stack.extend(reversed(subdirs))
    return FlatTree(layers, directories, symlinks, list(groups.values()), dropped)


def write_flat_tar(
    tree: FlatTree,
    open_layer: Callable[[int], BinaryIO],
    out: BinaryIO,
    *,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Writes the canonical tar of `tree`; `open_layer(i)` gives layer i decompressed.

    Directories come first (parents first), then symlinks, then file data layer by
    layer, each layer read once and only when it holds surviving data.
    """
    writer = TarWriter(out)
    for path, node in tree.directories:
        writer.directory(path, mode=node.mode, mtime=node.mtime)
    for path, node in tree.symlinks:
        writer.symlink(path, node.link, mtime=node.mtime)
    by_layer: dict[int, dict[int, tuple[FileData, list[str]]]] = {}
    for data, names in tree.files:
        by_layer.setdefault(data.layer, {})[data.ordinal] = (data, names)
    for number in sorted(by_layer):
        with contextlib.closing(open_layer(number)) as stream:
            _write_layer_files(writer, stream, tree.layers[number], by_layer[number], on_bytes)
    writer.close()


def _write_layer_files(
    writer: TarWriter,
    stream: BinaryIO,
    layer: str,
    needed: dict[int, tuple[FileData, list[str]]],
    on_bytes: Callable[[int], None] | None,
) -> None:
    reader = TarReader(stream, layer=layer)
    for member in reader:
        group = needed.pop(member.ordinal, None)
        if group is None:
            continue
        data, names = group
        if (member.type != REGULAR or member.size != data.size
                or normalize_name(member.name, layer=layer) != data.member):
            raise ContentRejected(
                f"layer {layer} changed while it was converted: member {member.ordinal} is "
                f"not {data.member!r} ({data.size} bytes) any more",
                hint="pull the image again",
            )
        writer.file(names[0], mode=data.mode, mtime=data.mtime, size=data.size,
                    copy=functools.partial(reader.copy_data, member, on_bytes=on_bytes))
        for name in names[1:]:
            writer.hardlink(name, names[0], mode=data.mode, mtime=data.mtime)
        if not needed:
            return
    missing = min(needed.values(), key=lambda group: group[0].ordinal)[0]
    raise ContentRejected(
        f"layer {layer} ends before member {missing.member!r}",
        hint="the layer is truncated; pull the image again",
    )
