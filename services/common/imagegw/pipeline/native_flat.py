"""The compiled flatten path: the exact OCI merge of compact layer indexes and the
canonical tar writer, in C (native/flat.c, issue 21).

`merge` gives the same tree as `flatten.merge_layers` over the decoded indexes (the same
ContentRejected refusals), and `write_tar` the same bytes as `flatten.write_flat_tar`,
copying each surviving file's data by its offset in the decompressed layer. Importing
this module raises ImportError when the extension was not built (the Python path runs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import BinaryIO

# ModuleNotFoundError (an ImportError) when the extension is not built.
from .native._flat import Tree
from .native._flat import merge as _merge

__all__ = ["Tree", "merge", "write_tar"]


def merge(indexes: Sequence[bytes]) -> Tree:
    """The merged tree of the layers' compact indexes, oldest first (no I/O).

    Raises ContentRejected as `flatten.merge_layers` does, ValueError for bytes that are
    not a compact index."""
    return _merge(list(indexes))


def write_tar(tree: Tree, open_layer: Callable[[int], BinaryIO], out: BinaryIO | int, *,
              on_bytes: Callable[[int], None] | None = None) -> None:
    """Writes the canonical tar of `tree` into `out` (a file, or a file descriptor).

    `open_layer(i)` gives layer i decompressed (read forward with readinto, then closed),
    only for the layers holding surviving data; `on_bytes(count)` follows the file data,
    at most once per MiB. Raises ContentRejected when a layer ends before its data."""
    if isinstance(out, int):
        fd = out
    else:
        out.flush()
        fd = out.fileno()
    tree.write(open_layer, fd, on_bytes)
