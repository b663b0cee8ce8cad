"""LRU eviction over the layer cache and the conversion cache, bounded by CacheMaxBytes.

Entries are ordered by mtime (every use refreshes it). An entry is deleted only while
the eviction holds its exclusive lease, so nothing a running job leased is ever
evicted, and never within `grace` seconds of its last use (an image config read just
now, before any lease could be taken).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from imagegw.registry.blobcache import BlobCache

from .conversions import ConversionCache
from .leases import Leases

log = logging.getLogger(__name__)

#: Seconds after its last use during which an entry is never evicted.
GRACE_SECONDS = 60.0

__all__ = ["EvictionReport", "evict", "blob_lease", "conversion_lease", "GRACE_SECONDS"]


def blob_lease(digest: str) -> str:
    return "blob-" + digest.split(":", 1)[1]


def conversion_lease(key: str) -> str:
    return "conversion-" + key


@dataclass(frozen=True)
class EvictionReport:
    bytes_before: int
    bytes_after: int
    evicted: int
    #: Entries over the limit that stayed because a job uses them (or used them just now).
    kept_in_use: int


@dataclass
class _Entry:
    lease: str
    main: Path
    extras: list[Path]
    size: int
    used: float


def evict(
    blobs: BlobCache,
    conversions: ConversionCache,
    leases: Leases,
    max_bytes: int,
    *,
    grace: float = GRACE_SECONDS,
) -> EvictionReport:
    """Deletes least recently used entries until the caches hold at most `max_bytes`."""
    entries = _blob_entries(blobs) + _conversion_entries(conversions)
    total = before = sum(entry.size for entry in entries)
    evicted = kept = 0
    now = time.time()
    for entry in sorted(entries, key=lambda e: e.used):
        if total <= max_bytes:
            break
        if now - entry.used < grace:
            kept += 1
            continue
        with leases.try_exclusive(entry.lease) as acquired:
            if not acquired or _used_since(entry):
                kept += 1
                continue
            for path in (entry.main, *entry.extras):
                path.unlink(missing_ok=True)
        total -= entry.size
        evicted += 1
        log.info("evicted %s (%d bytes) from the cache", entry.main.name, entry.size)
    if total > max_bytes:
        log.warning("the caches hold %d bytes, over CacheMaxBytes %d: %d entries are in use",
                    total, max_bytes, kept)
    return EvictionReport(before, total, evicted, kept)


def _used_since(entry: _Entry) -> bool:
    try:
        return entry.main.stat().st_mtime != entry.used
    except FileNotFoundError:
        return False


def _blob_entries(blobs: BlobCache) -> list[_Entry]:
    entries = []
    for path in blobs.blob_dir.iterdir():
        if path.name.startswith("."):
            continue  # a download in progress
        digest = "sha256:" + path.name
        try:
            info = path.stat()
            extras = blobs.sidecars(digest)
            size = info.st_size + sum(_size(extra) for extra in extras)
        except (FileNotFoundError, ValueError):
            continue
        entries.append(_Entry(blob_lease(digest), path, extras, size, info.st_mtime))
    return entries


def _conversion_entries(conversions: ConversionCache) -> list[_Entry]:
    entries = []
    for path in conversions.entries():
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        key = path.name.split(".", 1)[0]
        entries.append(_Entry(conversion_lease(key), path, [], info.st_size, info.st_mtime))
    return entries


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
