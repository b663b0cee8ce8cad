"""Layer indexes kept beside their blob in the cache, one per member policy.

A layer is not decompressed while it downloads (the cache's `ensure_verified` stores
it, hash-checked): the conversion reads each layer once, newest first, indexing it as
it goes (streaming.py). Its index is kept here as a JSON sidecar, so a layer converted
before is never indexed again and its next conversion can merge before reading data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

from imagegw.registry.blobcache import BlobCache

from .flatten import LayerIndex
from .members import MemberPolicy

log = logging.getLogger(__name__)

#: Bumped whenever LayerIndex or the member rules change what an index holds.
INDEX_VERSION = 1

__all__ = ["index_name", "load_index", "store_index"]


def index_name(policy: MemberPolicy) -> str:
    """The sidecar name of an index made under `policy` (the policy changes modes)."""
    owner = "-owner" if policy.owner_access else ""
    return f"index-v{INDEX_VERSION}-{'setuid' if policy.keep_setuid else 'nosetuid'}{owner}.json"


def load_index(cache: BlobCache, digest: str, policy: MemberPolicy) -> LayerIndex | None:
    """The index an earlier conversion made of layer `digest`; None when there is none."""
    return _read_index(cache.sidecar_path(digest, index_name(policy)), digest)


def store_index(cache: BlobCache, index: LayerIndex, policy: MemberPolicy) -> None:
    """Keeps the index of a cached layer for its next conversion (best effort)."""
    path = cache.sidecar_path(index.layer, index_name(policy))
    try:
        _write_index(path, index)
    except OSError as exc:
        log.warning("could not keep the index of %s (%s); it will be made again", index.layer, exc)


def _read_index(path: Path, digest: str) -> LayerIndex | None:
    try:
        data = json.loads(path.read_bytes())
        index = LayerIndex.from_json(data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("cached index %s is unreadable (%s); indexing the layer again", path, exc)
        return None
    if index.layer != digest:
        log.warning("cached index %s belongs to %s; indexing the layer again", path, index.layer)
        return None
    return index


def _write_index(path: Path, index: LayerIndex) -> None:
    """Writes the sidecar atomically (a torn file reads as missing and is redone)."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(index.to_json(), separators=(",", ":")))
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
