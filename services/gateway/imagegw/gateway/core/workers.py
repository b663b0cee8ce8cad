"""What the dispatcher needs of the workers (the port; `imagegw.gateway.workers` is the
gRPC adapter): start or re-attach a job and follow its events, and which systems the
live workers serve."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from imagegw.domain.errors import WorkerUnavailable
from imagegw.domain.model import BuildEvent, BuildJob

__all__ = ["WorkerLost", "Workers"]


class WorkerLost(WorkerUnavailable):
    """The connection to a worker broke in the middle of a job: the job may be handed
    out again (a worker re-attaches to a job it still runs, by job id)."""


class Workers(Protocol):
    def build(self, job: BuildJob) -> tuple[str, Iterator[BuildEvent]]:
        """Starts (or attaches to) `job` on a worker serving its system; returns the
        worker's address and its events, the last one final. Raises WorkerUnavailable
        when no worker can take it, and the iterator WorkerLost when the worker is lost."""
        ...

    def systems(self) -> set[str] | None:
        """The systems some live worker serves (None: every system)."""
        ...
