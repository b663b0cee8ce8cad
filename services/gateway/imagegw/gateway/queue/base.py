"""The job queue and progress hub protocols every backend (in-process, Redis) provides.

A job is handed to one consumer at a time under a lease; a consumer that stops
renewing it (it died) loses the job to the next claimer, with the attempt counted.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from imagegw.domain.errors import BackendUnavailable


class QueueUnavailable(BackendUnavailable):
    """The queue or progress broker could not be reached; trying again may succeed.

    Backends raise it in place of their own errors (redis), kept as `__cause__`."""

    retryable = True


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    system: str
    #: JSON-serialisable job description (never credentials).
    payload: dict[str, Any]


@dataclass(frozen=True)
class Claim:
    """One hand-out of a job to a consumer."""

    job: QueuedJob
    consumer: str
    #: 1 for the first claim, +1 each time the job is handed out again.
    attempt: int
    #: Backend-specific (the Redis stream entry id).
    token: str


class JobQueue(Protocol):
    """Jobs waiting for, or held by, consumers (workers). FIFO per system.

    A claim whose lease was lost (it expired and another consumer took the job)
    is stale: extend returns False and ack/release do nothing."""

    def submit(self, job: QueuedJob) -> None:
        """Adds a job at the end of its system's queue."""
        ...

    def claim(self, consumer: str, systems: Collection[str] | None,
              timeout: float) -> Claim | None:
        """The oldest job of one of `systems` (None: any), waiting up to `timeout`
        seconds (0: do not wait); None when there was none. Jobs whose lease
        expired are handed out again, attempt + 1."""
        ...

    def extend(self, claim: Claim) -> bool:
        """Renews the lease for another lease period; False if it was lost."""
        ...

    def ack(self, claim: Claim) -> None:
        """The job is finished (success or final failure): it is gone for good."""
        ...

    def release(self, claim: Claim) -> None:
        """Hands the job back at once, for any consumer to claim."""
        ...

    def pending(self) -> list[tuple[QueuedJob, str | None, int]]:
        """Every job not acked, oldest first: (job, consumer or None if waiting,
        attempt so far: 0 when never claimed)."""
        ...

    def close(self) -> None:
        """Releases the backend connection; jobs stay queued in a shared backend."""
        ...


class Subscription(Protocol):
    def get(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None when none came within `timeout` seconds."""
        ...

    def notify(self, wake: Callable[[], None] | None) -> None:
        """Calls `wake()` from the delivering thread after each event (and on failure or
        close), so a reader can wait without a thread of its own and read with `get(0)`.
        `wake` must not block (e.g. `loop.call_soon_threadsafe(event.set)`)."""
        ...

    def close(self) -> None:
        """Stops receiving; later events are not kept."""
        ...


class ProgressHub(Protocol):
    """Fan-out of job progress events to whoever watches a channel (a job)."""

    def publish(self, channel: str, event: dict[str, Any]) -> None:
        """Sends a JSON-serialisable event to every current subscriber of `channel`."""
        ...

    def subscribe(self, channel: str) -> Subscription:
        """A subscription that receives every event published after this returns.

        A slow subscriber's buffer is bounded: when it is full the oldest events
        are dropped, never the newest."""
        ...

    def close(self) -> None:
        """Releases the backend connection (open subscriptions must be closed first)."""
        ...
