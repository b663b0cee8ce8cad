"""Per-user limits on pulls (issue 4, API abuse).

A user may have at most MaxConcurrentPullsPerUser pulls of distinct images in
flight; joining a pull already running does not count. Anonymous callers share
one budget. The check and the start of the pull happen under one lock, so
concurrent requests of one gateway cannot overshoot it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from imagegw.domain.errors import ResourceExhausted
from imagegw.gateway.core.access import Caller
from imagegw.gateway.records import PullKey
from imagegw.gateway.store.base import ImageStore

__all__ = ["PullLimiter"]


class PullLimiter:
    def __init__(self, store: ImageStore, max_per_user: int) -> None:
        self.store = store
        self.max_per_user = max_per_user
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def admit(self, caller: Caller, key: PullKey) -> Iterator[None]:
        """Holds the lock while the caller starts the pull of `key`; raises
        ResourceExhausted when that would be one pull too many."""
        with self._lock:
            running = [p for p in self.store.in_flight_pulls()
                       if p.requester_uid == caller.uid and p.key != key]
            current = self.store.get_pull(key)
            joining = current is not None and current.state.in_flight
            if not joining and len(running) >= self.max_per_user:
                raise ResourceExhausted(
                    f"{caller.label()} already has {len(running)} pulls in flight "
                    f"(at most {self.max_per_user} at once)",
                    hint="wait for some to finish (shifterimg queue), then pull again")
            yield
