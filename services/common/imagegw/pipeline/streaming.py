"""Flattens the layers in one pass each, newest first, and proves the result exact.

The exact merge (flatten.merge_layers) needs every layer's index before the first
entry can be written, so each layer is decompressed twice: once to index it, once to
copy its surviving data. This module decompresses each layer once:

- layers are read newest first. An entry of layer i is written the moment it is read
  when nothing in the newer layers (already read) hides it: no entry or whiteout at
  its path, no whiteout, opaque marker or non-directory at one of its parents. Paths
  are taken literally (no symlinked parents), and what comes later in the same layer
  cannot be known yet. A hardlink is written at once when its target was written
  earlier in its layer, else at the end, from the exact tree;
- meanwhile every layer is indexed as usual. When all are read and the archive is
  complete, the exact merge of the indexes decides (`StreamedFlatten.verify`, which
  runs while tar2sqfs finishes the image): the entries written must be exactly the
  image's entries: each file the right member under one of its names, the other names
  hardlinks to it, every symlink and every directory (explicit, or made implicitly for
  the entries below it: root-owned 0755, mtime 0) with the exact mode and mtime;
- otherwise (a symlinked parent, a hardlink whose target's own name did not survive, a
  path written twice in one layer, ...) `SpeculationFailed` says why, and the caller
  throws the output away and runs the two-pass flatten with the indexes made.

Entries may come in any order for tar2sqfs as long as each path comes once and no
entry lies below a non-directory: it creates missing parents implicitly and gives an
implicit directory the mode and mtime of its entry when that arrives (see squashfs.py).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import BinaryIO

from .flatten import IMPLICIT_DIR_MODE, Entry, FlatTree, LayerIndex, merge_layers
from .members import Admitted, Kind, Marker, MarkerKind, MemberPolicy
from .prefetch import DataNotKept, LayerAhead, LayerInline, LayerSource
from .tarstream import REGULAR, TarWriter

__all__ = ["SpeculationFailed", "StreamedFlatten", "stream_flat_tar"]

#: The mtime tar2sqfs gives directories it creates implicitly (its --defaults).
IMPLICIT_DIR_MTIME = 0


class SpeculationFailed(Exception):
    """The one-pass flatten cannot be proven exact; the two-pass flatten must run.

    Not a user-facing error: the caller falls back. `indexes` holds the layers indexed
    so far (layer number -> index), so they are not indexed again.
    """

    def __init__(self, reason: str, indexes: dict[int, LayerIndex]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.indexes = indexes


def stream_flat_tar(
    layer_names: Sequence[str],
    open_layer: Callable[[int], BinaryIO],
    out: BinaryIO,
    *,
    policy: MemberPolicy,
    max_data_bytes: int,
    on_bytes: Callable[[int], None] | None = None,
    on_layer_index: Callable[[int, LayerIndex], None] | None = None,
) -> StreamedFlatten:
    """Writes the whole tar of the layers to `out`, reading each layer once, newest first.

    `open_layer(i)` gives layer i decompressed (the caller may block in it until that
    layer is downloaded). The tar is complete when this returns; call `verify()` on the
    result before using what was built from it. Raises SpeculationFailed early when
    writing on would clash, and ContentRejected when a member is refused.
    `on_layer_index(i, index)` gets each layer's index as soon as it is read to its end.
    """
    writer = TarWriter(out)
    emitter = _NewestFirst(writer, max_data_bytes)
    indexes: dict[int, LayerIndex] = {}
    order = list(reversed(range(len(layer_names))))

    def read_ahead(number: int) -> LayerAhead:
        return LayerAhead(lambda: open_layer(number), layer_names[number], policy,
                          emitter.surely_hidden).start()

    ahead: LayerAhead | None = None
    try:
        for position, number in enumerate(order):
            source: LayerSource = ahead if ahead is not None else LayerInline(
                open_layer(number), layer_names[number], policy)
            # The next layer is read ahead while this one is written (prefetch.py).
            ahead = read_ahead(order[position + 1]) if position + 1 < len(order) else None
            with contextlib.closing(source):
                indexes[number] = emitter.read_layer(
                    number, layer_names[number], source, on_bytes, indexes)
            if on_layer_index is not None:
                on_layer_index(number, indexes[number])
    except DataNotKept as exc:
        raise SpeculationFailed(str(exc), indexes) from exc
    finally:
        if ahead is not None:
            ahead.close()
    # What newer layers hid is not needed any more; the merge below builds the tree.
    emitter.hidden.clear()
    emitter.hidden_below.clear()
    streamed = StreamedFlatten(emitter, [indexes[n] for n in range(len(layer_names))])
    if emitter.deferred_links:
        streamed.write_deferred_links(writer)
    writer.close()
    return streamed


class StreamedFlatten:
    """A tar written in one pass, and what proves it (or not) equal to the exact merge."""

    def __init__(self, emitter: _NewestFirst, indexes: list[LayerIndex]) -> None:
        self._emitter = emitter
        #: Every layer's index, oldest first.
        self.indexes = indexes
        self._tree: FlatTree | None = None

    def exact_tree(self) -> FlatTree:
        """The exact merge of the layers (raises ContentRejected for a refused image)."""
        if self._tree is None:
            self._tree = merge_layers(self.indexes)
        return self._tree

    def write_deferred_links(self, writer: TarWriter) -> None:
        """Hardlinks whose target was not written before them, as the exact tree says."""
        emitter = self._emitter
        indexes = dict(enumerate(self.indexes))
        for data, names in self.exact_tree().files:
            first = emitter.written.get((data.layer, data.ordinal))
            for name in names:
                if name in emitter.deferred_links and first is not None and name != first:
                    # Checked like any entry: what was written may not be the exact tree.
                    emitter.deferred_links.discard(name)
                    if emitter.visible(name, Kind.HARDLINK, indexes, newer=False):
                        writer.hardlink(name, first, mode=data.mode, mtime=data.mtime)
                        emitter.links[name] = first
                        emitter.claim(name, Kind.HARDLINK)

    def verify(self) -> FlatTree:
        """The exact tree, once the tar written is proven to hold exactly it.

        Raises SpeculationFailed when it does not, ContentRejected for a refused image.
        """
        tree = self.exact_tree()
        emitter = self._emitter
        indexes = dict(enumerate(self.indexes))

        def fail(reason: str) -> SpeculationFailed:
            return SpeculationFailed(reason, indexes)

        if len(emitter.written) != len(tree.files) or len(emitter.links) != tree.hardlinks:
            raise fail(f"{len(emitter.written)} files and {len(emitter.links)} hardlinks were "
                       f"written; the image has {len(tree.files)} and {tree.hardlinks}")
        for data, names in tree.files:
            first = emitter.written.get((data.layer, data.ordinal))
            if first is None or first not in names:
                raise fail(f"{names[0]!r} is not the file written from layer {data.layer + 1}")
            if any(emitter.links.get(name) != first for name in names if name != first):
                raise fail(f"the names of {first!r} are not all linked to it")
        if emitter.symlinks != {path: (node.link, node.mtime) for path, node in tree.symlinks}:
            raise fail("the symlinks written are not the image's")
        directories = dict.fromkeys(emitter.implicit_dirs, (IMPLICIT_DIR_MODE, IMPLICIT_DIR_MTIME))
        directories.update(emitter.directories)
        if directories != {path: (node.mode, node.mtime) for path, node in tree.directories}:
            raise fail("the directories written are not the image's")
        return tree


class _NewestFirst:
    """What the newer layers hide, and what went out under which name."""

    def __init__(self, writer: TarWriter, max_data_bytes: int) -> None:
        self.writer = writer
        self.max_data_bytes = max_data_bytes
        self.data_bytes = 0
        #: Paths a newer layer has an entry or a whiteout at: that exact path is hidden.
        self.hidden: set[str] = set()
        #: Paths whose subtree a newer layer hides (whiteout, opaque, non-directory).
        self.hidden_below: set[str] = set()
        #: Every path written, with its kind, and the directories made implicitly.
        self.emitted: dict[str, Kind] = {}
        self.implicit_dirs: set[str] = set()
        #: Files written: (layer, ordinal) -> path; hardlinks: path -> the file's path.
        self.written: dict[tuple[int, int], str] = {}
        self.links: dict[str, str] = {}
        self.symlinks: dict[str, tuple[str, int]] = {}
        self.directories: dict[str, tuple[int, int]] = {}
        #: Hardlinks left for the end: their target was not written before them.
        self.deferred_links: set[str] = set()
        #: This layer's files written so far: path -> (mode, mtime).
        self._layer_files: dict[str, tuple[int, int]] = {}
        #: A parent directory whose whole path was found neither hidden nor a clash.
        self._clear_parent: str | None = None
        #: The parent of the last entry written (its ancestors are in implicit_dirs).
        self._claimed_parent: str | None = None

    def read_layer(
        self, number: int, name: str, source: LayerSource,
        on_bytes: Callable[[int], None] | None, indexes: dict[int, LayerIndex],
    ) -> LayerIndex:
        index = LayerIndex(layer=name)
        writer = self.writer
        self._layer_files = {}
        for member, result, data in source:
            if isinstance(result, Marker):
                index.markers.append((result.kind, result.path))
                continue
            if not isinstance(result, Admitted):
                index.dropped += 1
                continue
            path, kind = result.path, result.kind
            index.entries.append(Entry(path, kind, result.mode, result.mtime, result.size,
                                       result.link, member.ordinal, member.offset))
            if not self.visible(path, kind, indexes):
                continue
            if kind is Kind.FILE:
                if member.type != REGULAR:
                    continue  # left for verify() to notice
                self.data_bytes += result.size
                if self.data_bytes > self.max_data_bytes:
                    # The exact merge (maybe smaller) gives the verdict.
                    raise SpeculationFailed("the data written passes the unpacked-size limit",
                                            indexes)
                writer.file(path, mode=result.mode, mtime=result.mtime, size=result.size,
                            copy=functools.partial(source.copy, member, data, on_bytes=on_bytes))
                self.written[(number, member.ordinal)] = path
                self._layer_files[path] = (result.mode, result.mtime)
            elif kind is Kind.DIR:
                writer.directory(path, mode=result.mode, mtime=result.mtime)
                self.directories[path] = (result.mode, result.mtime)
            elif kind is Kind.SYMLINK:
                writer.symlink(path, result.link, mtime=result.mtime)
                self.symlinks[path] = (result.link, result.mtime)
            else:
                target = self._layer_files.get(result.link)
                if target is None:
                    self.deferred_links.add(path)
                    continue  # written at the end, if the exact tree has it
                writer.hardlink(path, result.link, mode=target[0], mtime=target[1])
                self.links[path] = result.link
            self.claim(path, kind)
        self._hide(index)
        return index

    def surely_hidden(self, path: str) -> bool:
        """Whether the newer layers read so far hide `path` (safe from another thread:
        what they hide only grows while layers are read)."""
        if path in self.hidden or "" in self.hidden_below:
            return True
        start = 0
        while (slash := path.find("/", start)) != -1:
            if path[:slash] in self.hidden_below:
                return True
            start = slash + 1
        return False

    def visible(self, path: str, kind: Kind, indexes: dict[int, LayerIndex], *,
                newer: bool = True) -> bool:
        """Whether no newer layer hides `path` (`newer`); fails when writing it would clash."""
        if newer and path in self.hidden:
            return False
        parent = path.rpartition("/")[0]
        if parent != self._clear_parent or not newer:
            start = 0
            while (slash := path.find("/", start)) != -1:
                ancestor = path[:slash]
                if newer and ancestor in self.hidden_below:
                    return False
                if self.emitted.get(ancestor, Kind.DIR) is not Kind.DIR:
                    raise SpeculationFailed(
                        f"{path!r} lies below the non-directory {ancestor!r}", indexes)
                start = slash + 1
            if newer and "" in self.hidden_below:  # an opaque marker at the root
                return False
            # Siblings are checked at once (most entries follow one of their siblings).
            self._clear_parent = parent if parent and newer else None
        if path in self.emitted or path in self.deferred_links:
            raise SpeculationFailed(f"{path!r} appears twice in one layer", indexes)
        if kind is not Kind.DIR and path in self.implicit_dirs:
            raise SpeculationFailed(f"{path!r} is a directory and something else", indexes)
        return True

    def claim(self, path: str, kind: Kind) -> None:
        self.emitted[path] = kind
        parent = path.rpartition("/")[0]
        clear = self._clear_parent
        if kind is not Kind.DIR and clear is not None and (
                clear == path or clear.startswith(path + "/")):
            self._clear_parent = None  # a non-directory now lies on that parent's path
        if parent == self._claimed_parent:
            return  # its ancestors are known already
        self._claimed_parent = parent
        start = 0
        while (slash := path.find("/", start)) != -1:
            ancestor = path[:slash]
            if ancestor not in self.emitted:
                self.implicit_dirs.add(ancestor)
            start = slash + 1

    def _hide(self, index: LayerIndex) -> None:
        """Adds what this layer hides from the older layers still to come."""
        self._clear_parent = None
        for kind, path in index.markers:
            self.hidden_below.add(path)
            if kind is MarkerKind.WHITEOUT:
                self.hidden.add(path)
        for entry in index.entries:
            self.hidden.add(entry.path)
            if entry.kind is not Kind.DIR:
                self.hidden_below.add(entry.path)
