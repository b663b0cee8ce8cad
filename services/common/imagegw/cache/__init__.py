"""The worker's caches: layers (content-addressed blobs with their indexes) and converted
images, the leases running jobs hold on them, and the LRU eviction that bounds them.

`WorkerCaches` owns every path under the cache root that these use.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

from .conversions import ConversionCache
from .eviction import EvictionReport, blob_lease, conversion_lease, evict
from .layout import CacheLayout
from .leases import Leases

log = logging.getLogger(__name__)

__all__ = ["CacheLayout", "ConversionCache", "EvictionReport", "Leases", "WorkerCaches"]

_EVICTOR = "evictor"


class WorkerCaches:
    def __init__(self, layout: CacheLayout, *, max_bytes: int | None = None) -> None:
        self.layout = layout
        self.max_bytes = max_bytes
        self.blobs = layout.blob_cache()
        self.conversions = layout.conversion_cache()
        self.leases = layout.lease_table()

    @contextlib.contextmanager
    def lease(self, *, digests: Iterable[str] = (), conversions: Iterable[str] = ()
              ) -> Iterator[None]:
        """Keeps these blobs and conversions from eviction for the block."""
        names = [blob_lease(d) for d in digests] + [conversion_lease(k) for k in conversions]
        with self.leases.hold(names):
            yield

    def evict(self) -> EvictionReport | None:
        """Brings the caches under `max_bytes`; None when unbounded or another process
        is evicting right now."""
        if self.max_bytes is None:
            return None
        with self.leases.try_exclusive(_EVICTOR) as acquired:
            if not acquired:
                return None
            return evict(self.blobs, self.conversions, self.leases, self.max_bytes)
