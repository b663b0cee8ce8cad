"""Layer indexes kept beside their blob in the cache, one per member policy.

A layer is not decompressed while it downloads (the cache's `ensure_verified` stores
it, hash-checked): the conversion reads each layer once, newest first, indexing it as
it goes. Its index is kept here as a sidecar, in the compact form (compact.py: bytes,
not Python objects; zlib level 1 on disk, ~4x smaller for ~5 ms of CPU per MB), so a layer
converted before is never indexed again and its next conversion can merge before
reading data.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import zlib
from pathlib import Path

from imagegw.registry.blobcache import BlobCache

from .compact import layer_of
from .members import MemberPolicy

log = logging.getLogger(__name__)

#: Bumped whenever the index format or the member rules change what an index holds
#: (3: compact indexes instead of JSON; 4: their entries' numbers as varints, IGWIDX2).
INDEX_VERSION = 4
#: zlib level of the sidecars: most of what a small-file image writes besides the blobs
#: and the image is their indexes (~48 bytes a member); level 1 keeps a quarter of it.
_LEVEL = 1

__all__ = ["index_name", "load_index", "store_index"]


def index_name(policy: MemberPolicy) -> str:
    """The sidecar name of an index made under `policy` (the policy changes modes)."""
    owner = "-owner" if policy.owner_access else ""
    return f"index-v{INDEX_VERSION}-{'setuid' if policy.keep_setuid else 'nosetuid'}{owner}.idx"


def load_index(cache: BlobCache, digest: str, policy: MemberPolicy) -> bytes | None:
    """The compact index an earlier conversion made of layer `digest`; None when there
    is none (or it is not one, or belongs to another layer)."""
    return _read_index(cache.sidecar_path(digest, index_name(policy)), digest)


def store_index(cache: BlobCache, digest: str, index: bytes, policy: MemberPolicy) -> None:
    """Keeps the compact index of a cached layer for its next conversion (best effort)."""
    path = cache.sidecar_path(digest, index_name(policy))
    try:
        _write_index(path, index)
    except OSError as exc:
        log.warning("could not keep the index of %s (%s); it will be made again", digest, exc)


def _read_index(path: Path, digest: str) -> bytes | None:
    """The sidecar's bytes when its header is a compact index of `digest` (the rest is
    checked where it is decoded or merged)."""
    try:
        data = zlib.decompress(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, zlib.error) as exc:
        log.warning("cached index %s is unreadable (%s); indexing the layer again", path, exc)
        return None
    try:
        layer = layer_of(data)
    except ValueError:
        log.warning("cached index %s is not a compact index; indexing the layer again", path)
        return None
    if layer != digest:
        log.warning("cached index %s belongs to %s; indexing the layer again", path, layer)
        return None
    return data


def _write_index(path: Path, index: bytes) -> None:
    """Writes the sidecar atomically (a torn file reads as missing and is redone)."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(zlib.compress(index, _LEVEL))
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
