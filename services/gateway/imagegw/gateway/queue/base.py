"""The job queue and progress hub protocols every backend (in-process, Redis) provides.

A job is handed to one consumer at a time under a lease; a consumer that stops
renewing it (it died) loses the job to the next claimer, with the attempt counted.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from imagegw.domain.errors import BackendUnavailable
from imagegw.domain.model import Progress


class QueueUnavailable(BackendUnavailable):
    """The queue or progress broker could not be reached; trying again may succeed.

    Backends raise it in place of their own errors (redis), kept as `__cause__`."""

    retryable = True


@dataclass(frozen=True)
class JobSpec:
    """What a queued pull asks a worker for. Travels as JSON through shared queues, so it
    never holds credentials: the dispatcher looks those up for the requester."""

    reference: str
    acl_key: str = ""
    user_acl: tuple[int, ...] = ()
    group_acl: tuple[int, ...] = ()
    requester_uid: int = -1
    #: The manifest digest of the READY image a re-check compares with ("" for none).
    known_manifest_digest: str = ""
    #: The digest of the signature policy the gateway judges the system's images by.
    policy_digest: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "acl_key": self.acl_key,
                "user_acl": list(self.user_acl), "group_acl": list(self.group_acl),
                "requester_uid": self.requester_uid,
                "known_manifest_digest": self.known_manifest_digest,
                "policy_digest": self.policy_digest}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobSpec:
        return cls(reference=data["reference"], acl_key=data.get("acl_key", ""),
                   user_acl=tuple(int(u) for u in data.get("user_acl", ())),
                   group_acl=tuple(int(g) for g in data.get("group_acl", ())),
                   requester_uid=int(data.get("requester_uid", -1)),
                   known_manifest_digest=data.get("known_manifest_digest", ""),
                   policy_digest=data.get("policy_digest", ""))


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    system: str
    spec: JobSpec


@dataclass(frozen=True)
class ProgressEvent:
    """One message on a job's progress channel: where the job is, or that it ended (the
    watchers then read the outcome from the records)."""

    state: int = 0
    progress: Progress | None = None
    final: bool = False

    @classmethod
    def ended(cls) -> ProgressEvent:
        return cls(final=True)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"state": self.state, "final": self.final}
        if self.progress is not None:
            data["progress"] = self.progress.to_dict()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProgressEvent:
        progress = data.get("progress")
        return cls(state=int(data.get("state", 0)), final=bool(data.get("final", False)),
                   progress=None if progress is None else Progress.from_dict(progress))


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
    def get(self, timeout: float) -> ProgressEvent | None:
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

    def publish(self, channel: str, event: ProgressEvent) -> None:
        """Sends an event to every current subscriber of `channel`."""
        ...

    def subscribe(self, channel: str) -> Subscription:
        """A subscription that receives every event published after this returns.

        A slow subscriber's buffer is bounded: when it is full the oldest events
        are dropped, never the newest."""
        ...

    def close(self) -> None:
        """Releases the backend connection (open subscriptions must be closed first)."""
        ...
