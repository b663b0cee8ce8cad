"""The gateway's client for worker services (edge code): calls BuildImage on a
worker and turns the stream into plain events. Trying the next worker when one
is unreachable, and re-attaching by job id, are decided by the dispatcher."""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Iterator, Sequence

import grpc

from imagegw.directory import WorkerDirectory, redis_from_url
from imagegw.domain.config import Config
from imagegw.domain.errors import INTERNAL_KIND, WorkerUnavailable
from imagegw.domain.model import BuildEvent, BuildJob, Failure
from imagegw.gateway.core.workers import WorkerLost
from imagegw.rpc import convert
from imagegw.rpc.server import worker_channel_credentials
from imagegw.rpc.status import kind_for_status
from imagegw.rpc.worker_auth import call_metadata, load_worker_token
from imagegw.v1 import worker_service_pb2_grpc

log = logging.getLogger(__name__)

#: A build that says nothing for this long is considered lost.
STREAM_IDLE_TIMEOUT = 600.0


class WorkerPool:
    """Workers from a fixed address list, or from the Redis worker directory (the gRPC
    implementation of `imagegw.gateway.core.workers.Workers`)."""

    def __init__(self, addresses: Sequence[str] = (), *,
                 directory: WorkerDirectory | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 token: str | None = None) -> None:
        if not addresses and directory is None:
            raise WorkerUnavailable("no worker addresses configured")
        self._addresses = list(addresses)
        self._directory = directory
        self._credentials = credentials
        self._metadata = call_metadata(token)
        self._channels: dict[str, grpc.Channel] = {}
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def _stub(self, address: str) -> tuple[grpc.Channel, worker_service_pb2_grpc.WorkerServiceStub]:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = (
                    grpc.secure_channel(address, self._credentials) if self._credentials
                    else grpc.insecure_channel(address))
        return channel, worker_service_pb2_grpc.WorkerServiceStub(channel)

    def _candidates(self, system: str) -> list[str]:
        if self._directory is not None:
            addresses = [worker.address for worker in self._directory.serving(system)]
            if not addresses:
                raise WorkerUnavailable(f"no live worker serves system {system!r}",
                                        hint="start `imagegw worker` with that system in its config")
        else:
            addresses = list(self._addresses)
        start = next(self._counter) % len(addresses)
        return addresses[start:] + addresses[:start]

    def build(self, job: BuildJob) -> tuple[str, Iterator[BuildEvent]]:
        """Starts (or attaches to) `job` on a worker; returns its address and events."""
        order = self._candidates(job.system)
        errors = []
        for address in order:
            channel, stub = self._stub(address)
            try:
                grpc.channel_ready_future(channel).result(timeout=5)
            except grpc.FutureTimeoutError:
                errors.append(f"{address}: not reachable")
                continue
            stream = stub.BuildImage(convert.job_to_proto(job), metadata=self._metadata)
            return address, self._events(address, stream)
        raise WorkerUnavailable("no worker reachable: " + "; ".join(errors),
                                hint="check that `imagegw worker` runs and WorkerAddresses")

    @staticmethod
    def _events(address: str, stream) -> Iterator[BuildEvent]:
        try:
            for message in stream:
                kind = message.WhichOneof("event")
                if kind == "progress":
                    yield BuildEvent(progress=convert.progress_from_proto(message.progress))
                elif kind == "result":
                    final = BuildEvent(result=convert.result_from_proto(message.result))
                    _read_to_the_end(stream)
                    yield final
                    return
                elif kind == "failure":
                    final = BuildEvent(failure=convert.failure_from_proto(message.failure))
                    _read_to_the_end(stream)
                    yield final
                    return
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
                        grpc.StatusCode.UNKNOWN):
                raise WorkerLost(f"lost worker {address}: {exc.details()}") from exc
            yield BuildEvent(failure=Failure(
                kind_for_status(code) if code else INTERNAL_KIND,
                exc.details() or "worker refused the job"))
            return
        raise WorkerLost(f"worker {address} ended the job stream without a result")

    def consumers(self, slots_per_worker: int) -> int:
        """How many dispatcher threads keep these workers busy."""
        if self._directory is not None:
            return max(4, 4 * max(1, slots_per_worker))
        return max(1, slots_per_worker) * len(self._addresses)

    def systems(self) -> set[str] | None:
        """The systems some live worker serves (None: every system)."""
        if self._directory is None:
            return None
        return {system for worker in self._directory.live() for system in worker.systems}

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()


def open_worker_pool(config: Config, static_addresses: Sequence[str]) -> WorkerPool:
    """The workers the gateway dispatches to: the given addresses, else (with a
    Broker) the workers registered in Redis."""
    credentials = worker_channel_credentials(config.worker_tls) if config.worker_tls else None
    token = load_worker_token(config)
    if static_addresses:
        return WorkerPool(static_addresses, credentials=credentials, token=token)
    if config.broker:
        return WorkerPool(directory=WorkerDirectory(redis_from_url(config.broker),
                                                     ttl=config.worker_ttl_seconds),
                          credentials=credentials, token=token)
    raise WorkerUnavailable("no workers: set WorkerAddresses, or a Broker that workers register with")


def _read_to_the_end(stream) -> None:
    """Reads a job stream to its end after its final event (the worker ends the call right
    after it). The caller acts on the final event and drops the stream: dropped before its
    end, the call would be cancelled under the worker, and counted there as CANCELLED."""
    with contextlib.suppress(grpc.RpcError):
        for _ in stream:
            pass
