"""The gateway's client for worker services (edge code): calls BuildImage on a
worker and turns the stream into plain events. Trying the next worker when one
is unreachable, and re-attaching by job id, are decided by the dispatcher."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import grpc

from imagegw import convert
from imagegw.errors import WorkerUnavailable
from imagegw.model import BuildJob, BuildResult, Failure, Progress
from imagegw.v1 import worker_service_pb2_grpc

log = logging.getLogger(__name__)

#: A build that says nothing for this long is considered lost.
STREAM_IDLE_TIMEOUT = 600.0


@dataclass(frozen=True)
class WorkerEvent:
    progress: Progress | None = None
    result: BuildResult | None = None
    failure: Failure | None = None


class WorkerLost(WorkerUnavailable):
    """The connection to a worker broke in the middle of a job."""


class WorkerPool:
    def __init__(self, addresses: Sequence[str]) -> None:
        if not addresses:
            raise WorkerUnavailable("no worker addresses configured")
        self._addresses = list(addresses)
        self._channels = {a: grpc.insecure_channel(a) for a in self._addresses}
        self._stubs = {a: worker_service_pb2_grpc.WorkerServiceStub(c)
                       for a, c in self._channels.items()}
        self._next = itertools.cycle(range(len(self._addresses)))
        self._lock = threading.Lock()

    def build(self, job: BuildJob, *, prefer: str | None = None
              ) -> tuple[str, Iterator[WorkerEvent]]:
        """Starts (or attaches to) `job` on a worker; returns its address and events."""
        with self._lock:
            start = next(self._next)
        order = self._addresses[start:] + self._addresses[:start]
        if prefer in self._stubs:
            order.remove(prefer)
            order.insert(0, prefer)
        errors = []
        for address in order:
            try:
                grpc.channel_ready_future(self._channels[address]).result(timeout=5)
            except grpc.FutureTimeoutError:
                errors.append(f"{address}: not reachable")
                continue
            stream = self._stubs[address].BuildImage(convert.job_to_proto(job))
            return address, self._events(address, stream)
        raise WorkerUnavailable("no worker reachable: " + "; ".join(errors),
                                hint="check that `imagegw worker` runs and WorkerAddresses")

    @staticmethod
    def _events(address: str, stream) -> Iterator[WorkerEvent]:
        try:
            for message in stream:
                kind = message.WhichOneof("event")
                if kind == "progress":
                    yield WorkerEvent(progress=convert.progress_from_proto(message.progress))
                elif kind == "result":
                    yield WorkerEvent(result=convert.result_from_proto(message.result))
                    return
                elif kind == "failure":
                    yield WorkerEvent(failure=convert.failure_from_proto(message.failure))
                    return
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
                        grpc.StatusCode.UNKNOWN):
                raise WorkerLost(f"lost worker {address}: {exc.details()}") from exc
            yield WorkerEvent(failure=Failure(code.value[0] if code else 2,
                                              exc.details() or "worker refused the job"))
            return
        raise WorkerLost(f"worker {address} ended the job stream without a result")

    def consumers(self, slots_per_worker: int) -> int:
        """How many dispatcher threads keep these workers busy."""
        return max(1, slots_per_worker) * len(self._addresses)

    def systems(self) -> set[str] | None:
        """The systems these workers serve (None: every system)."""
        return None

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


def open_worker_pool(config, static_addresses: Sequence[str]) -> WorkerPool:
    """The workers the gateway dispatches to: the given addresses."""
    return WorkerPool(static_addresses)
