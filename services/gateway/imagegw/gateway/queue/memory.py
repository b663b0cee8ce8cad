"""The in-process job queue and progress hub: the default for a single gateway
process (in-process or directly dispatched workers). Nothing survives a restart;
the gateway re-queues in-flight pulls from its record store instead.
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass

from imagegw.gateway.queue.base import Claim, JobSpec, ProgressEvent, QueuedJob
from imagegw.gateway.queue.buffer import DEFAULT_BUFFER_SIZE, BufferedSubscription


@dataclass
class _Entry:
    job: QueuedJob
    seq: int
    deliveries: int = 0
    consumer: str | None = None
    token: str = ""
    deadline: float = 0.0


class MemoryJobQueue:
    """JobQueue in this process's memory; thread-safe."""

    def __init__(self, lease_seconds: float = 30.0) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        self.lease_seconds = lease_seconds
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._waiting: dict[str, list[tuple[int, _Entry]]] = {}
        self._running: dict[str, _Entry] = {}  # by claim token

    def submit(self, job: QueuedJob) -> None:
        # The same JSON round trip as a shared backend: callers find out early
        # when a payload does not serialise, and never share mutable state.
        spec = JobSpec.from_json(json.loads(json.dumps(job.spec.to_json())))
        entry = _Entry(QueuedJob(job.job_id, job.system, spec), next(self._seq))
        with self._cond:
            heapq.heappush(self._waiting.setdefault(job.system, []), (entry.seq, entry))
            self._cond.notify_all()

    def claim(self, consumer: str, systems: Collection[str] | None,
              timeout: float) -> Claim | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while True:
                now = time.monotonic()
                self._requeue_expired(now)
                entry = self._pop_oldest(systems)
                if entry is not None:
                    return self._hand_out(entry, consumer, now)
                wake = min([deadline, *(e.deadline for e in self._running.values())])
                if now >= deadline:
                    return None
                self._cond.wait(max(wake - now, 0.001))

    def _requeue_expired(self, now: float) -> None:
        for token, entry in list(self._running.items()):
            if entry.deadline <= now:
                del self._running[token]
                self._push_back(entry)

    def _push_back(self, entry: _Entry) -> None:
        entry.consumer = None
        entry.token = ""
        heapq.heappush(self._waiting.setdefault(entry.job.system, []), (entry.seq, entry))
        self._cond.notify_all()

    def _pop_oldest(self, systems: Collection[str] | None) -> _Entry | None:
        names = self._waiting.keys() if systems is None else systems
        candidates = [(heap[0][0], name) for name in names
                      if (heap := self._waiting.get(name))]
        if not candidates:
            return None
        _, name = min(candidates)
        return heapq.heappop(self._waiting[name])[1]

    def _hand_out(self, entry: _Entry, consumer: str, now: float) -> Claim:
        entry.deliveries += 1
        entry.consumer = consumer
        entry.token = f"{entry.seq}-{entry.deliveries}"
        entry.deadline = now + self.lease_seconds
        self._running[entry.token] = entry
        return Claim(entry.job, consumer, entry.deliveries, entry.token)

    def _held(self, claim: Claim) -> _Entry | None:
        entry = self._running.get(claim.token)
        if entry is None or entry.consumer != claim.consumer:
            return None
        return entry

    def extend(self, claim: Claim) -> bool:
        with self._cond:
            entry = self._held(claim)
            if entry is None:
                return False
            entry.deadline = time.monotonic() + self.lease_seconds
            return True

    def ack(self, claim: Claim) -> None:
        with self._cond:
            if self._held(claim) is not None:
                del self._running[claim.token]

    def release(self, claim: Claim) -> None:
        with self._cond:
            entry = self._held(claim)
            if entry is not None:
                del self._running[claim.token]
                self._push_back(entry)

    def pending(self) -> list[tuple[QueuedJob, str | None, int]]:
        with self._cond:
            entries = [e for heap in self._waiting.values() for _, e in heap]
            entries += self._running.values()
            entries.sort(key=lambda e: e.seq)
            return [(e.job, e.consumer, e.deliveries) for e in entries]

    def close(self) -> None:
        """Nothing to release; the jobs go with the object."""


class MemorySubscription(BufferedSubscription):
    """A subscriber of an in-process hub."""


class MemoryProgressHub:
    """ProgressHub within this process; thread-safe."""

    def __init__(self, buffer_size: int = DEFAULT_BUFFER_SIZE) -> None:
        self.buffer_size = buffer_size
        self._lock = threading.Lock()
        self._subscribers: dict[str, list[MemorySubscription]] = {}

    def publish(self, channel: str, event: ProgressEvent) -> None:
        text = json.dumps(event.to_json())
        # Delivered under the lock, so every subscriber sees concurrent publishers'
        # events in the same order.
        with self._lock:
            for subscription in self._subscribers.get(channel, ()):
                subscription.deliver(ProgressEvent.from_json(json.loads(text)))

    def subscribe(self, channel: str) -> MemorySubscription:
        subscription = MemorySubscription(channel, self.buffer_size, self._unsubscribe)
        with self._lock:
            self._subscribers.setdefault(channel, []).append(subscription)
        return subscription

    def close(self) -> None:
        """Nothing to release."""

    def _unsubscribe(self, subscription: BufferedSubscription) -> None:
        with self._lock:
            subscribers = self._subscribers.get(subscription.channel, [])
            if subscription in subscribers:
                subscribers.remove(subscription)
            if not subscribers:
                self._subscribers.pop(subscription.channel, None)
