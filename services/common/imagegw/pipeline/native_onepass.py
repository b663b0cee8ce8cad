"""The compiled one-pass flatten: streaming.py's speculation, in C (issue 21).

Layers are read newest first and each is decompressed once: the compiled scanner
(native/scan.c) indexes it and, through an `Emitter` (native/onepass.c), writes every
entry no newer layer hides straight into the image's tar, file data from its read
buffer. When every layer is read, the exact merge (native_flat.merge) writes the
deferred hardlinks and `CompiledStream.verify` proves the tar holds exactly the image
(native/flat.c), else SpeculationFailed carries the compact indexes made so far for the
two-pass flatten. The bytes written are `streaming.stream_flat_tar`'s, and so are the
verdicts. Importing this module raises ImportError when the extensions are not built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import BinaryIO

from . import native_flat, native_scan  # ImportError: not built
from .members import MemberPolicy
from .native import _scan

__all__ = ["CompiledStream", "SpeculationFailed", "stream_flat_tar"]


class SpeculationFailed(Exception):
    """The one-pass tar cannot be proven exact; `indexes` (layer number -> compact index)
    holds the layers read to their end, for the two-pass flatten."""

    def __init__(self, reason: str, indexes: dict[int, bytes]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.indexes = indexes


def stream_flat_tar(
    layer_names: Sequence[str],
    open_layer: Callable[[int], BinaryIO],
    out: BinaryIO | int,
    *,
    policy: MemberPolicy,
    max_data_bytes: int,
    on_layer_index: Callable[[int, bytes], None] | None = None,
) -> CompiledStream:
    """Writes the whole tar of the layers into `out` (a file, or a file descriptor),
    reading each layer once, newest first (as `streaming.stream_flat_tar`).

    The tar is complete when this returns; call `verify()` before using what was built
    from it. Raises SpeculationFailed when writing on would clash (or passes
    `max_data_bytes`), ContentRejected when a member or the image is refused.
    `on_layer_index(i, index)` gets each layer's compact index once it is read."""
    if isinstance(out, int):
        fd = out
    else:
        out.flush()
        fd = out.fileno()
    emitter = _scan.Emitter(fd, max_data_bytes, len(layer_names))
    indexes: dict[int, bytes] = {}
    for number in reversed(range(len(layer_names))):
        stream = open_layer(number)
        try:
            indexes[number] = native_scan.scan_layer(
                stream, layer=layer_names[number], policy=policy, emitter=emitter,
                number=number)
        except _scan.SpeculationFailed as failed:
            raise SpeculationFailed(str(failed), indexes) from None
        finally:
            stream.close()
        if on_layer_index is not None:
            on_layer_index(number, indexes[number])
    streamed = CompiledStream(emitter, [indexes[n] for n in range(len(layer_names))])
    streamed.write_deferred_links()
    emitter.close()
    return streamed


class CompiledStream:
    """A tar written in one pass, and what proves it (or not) equal to the exact merge."""

    def __init__(self, emitter: _scan.Emitter, indexes: list[bytes]) -> None:
        self._emitter: _scan.Emitter | None = emitter
        #: Every layer's compact index, oldest first.
        self.indexes = indexes
        self._tree: native_flat.Tree | None = None

    def exact_tree(self) -> native_flat.Tree:
        """The exact merge (raises ContentRejected for a refused image)."""
        self._state()  # a released stream has no tree either
        if self._tree is None:
            self._tree = native_flat.merge(self.indexes)
        return self._tree

    def write_deferred_links(self) -> None:
        """Hardlinks whose target was not written before them, as the exact tree says
        (the merge runs here only when there are some)."""
        if not self._state().deferred:
            return
        reason = self.exact_tree().write_deferred(self._state().state)
        if reason is not None:
            raise SpeculationFailed(reason, dict(enumerate(self.indexes)))

    def verify(self) -> native_flat.Tree:
        """The exact tree, once the tar written is proven to hold exactly it. Raises
        SpeculationFailed when it does not, ContentRejected for a refused image.

        The path table is freed before the exact tree is built (the tree resolves the
        records written instead: native/flat.c, records_resolve), so the two are never
        held at once; `write_deferred_links` cannot run afterwards."""
        emitter = self._state()
        emitter.forget_paths()
        tree = self.exact_tree()
        reason = tree.verify(emitter.state)
        if reason is not None:
            raise SpeculationFailed(reason, dict(enumerate(self.indexes)))
        return tree

    def release(self) -> None:
        """Frees the one pass's state (its path table and records) and the exact tree,
        which only `write_deferred_links` and `verify` need: a verdict taken, nothing
        else reads them. `indexes` stay. Using the stream afterwards raises RuntimeError
        (a tree returned earlier is the caller's until it drops it)."""
        self._emitter = None
        self._tree = None

    def _state(self) -> _scan.Emitter:
        if self._emitter is None:
            raise RuntimeError("this one-pass stream was released: its path table and "
                               "exact tree are gone; verify before release()")
        return self._emitter
