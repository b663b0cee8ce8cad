"""Prometheus metrics of the gateway and the worker: the one registry of the process, the
gRPC server interceptor that counts requests, the small functions the pipeline and the
dispatcher call, and the HTTP endpoint that serves it all (`MetricsListen`,
`WorkerMetricsListen`). Recording is always on and cheap; the endpoint is optional."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from imagegw.domain.config import parse_host_port
from imagegw.domain.errors import ConfigError

__all__ = [
    "REGISTRY", "MetricsEndpoint", "serve", "instrument_build",
    "layer_cache", "bytes_downloaded", "bytes_published", "stage_seconds", "job_in_flight",
    "watch_queue",
]

log = logging.getLogger(__name__)

#: Everything this process measures; both endpoints of `imagegw serve` show all of it.
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

#: Seconds, from a cached small image to a multi-gigabyte conversion.
_LONG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)

GRPC_REQUESTS = Counter(
    "imagegw_grpc_requests", "gRPC requests handled, by service, method and status code",
    ["service", "method", "code"], registry=REGISTRY)
GRPC_SECONDS = Histogram(
    "imagegw_grpc_request_duration_seconds",
    "Time from a gRPC request's arrival to its status (streams: the whole stream)",
    ["service", "method"], buckets=_LONG_BUCKETS, registry=REGISTRY)
STAGE_SECONDS = Histogram(
    "imagegw_pull_stage_duration_seconds",
    "Time a worker's build job spent in each stage (resolving, downloading, converting, publishing)",
    ["stage"], buckets=_LONG_BUCKETS, registry=REGISTRY)
PULL_SECONDS = Histogram(
    "imagegw_pull_duration_seconds", "Time of a worker's build job, start to end, by outcome",
    ["outcome"], buckets=_LONG_BUCKETS, registry=REGISTRY)
PULLS = Counter(
    "imagegw_pulls", "Build jobs a worker finished: built, reused (already published), "
    "unchanged (same manifest) or failed", ["outcome"], registry=REGISTRY)
DOWNLOADED_BYTES = Counter(
    "imagegw_downloaded_bytes", "Layer bytes downloaded from registries (cache misses)",
    registry=REGISTRY)
PUBLISHED_BYTES = Counter(
    "imagegw_published_bytes", "Image bytes published to systems", ["system"], registry=REGISTRY)
LAYER_CACHE = Counter(
    "imagegw_layer_cache_requests", "Layers a build needed, by whether the cache had them",
    ["result"], registry=REGISTRY)
WORKER_JOBS = Gauge(
    "imagegw_worker_jobs_in_flight", "Build jobs running on this worker", registry=REGISTRY)
GATEWAY_JOBS = Gauge(
    "imagegw_gateway_jobs_in_flight", "Jobs this gateway's dispatcher is following on workers",
    registry=REGISTRY)

for _result in ("hit", "miss"):
    LAYER_CACHE.labels(_result)
for _outcome in ("built", "reused", "unchanged", "failed"):
    PULLS.labels(_outcome)


# --- what the pipeline and the dispatcher call ------------------------------------------

def layer_cache(hit: bool, size: int = 0) -> None:
    """A layer was found in the cache (`hit`) or downloaded (`size` bytes)."""
    LAYER_CACHE.labels("hit" if hit else "miss").inc()
    if not hit:
        bytes_downloaded(size)


def bytes_downloaded(n: int) -> None:
    DOWNLOADED_BYTES.inc(max(0, n))


def bytes_published(n: int, system: str) -> None:
    PUBLISHED_BYTES.labels(system).inc(max(0, n))


def stage_seconds(stage: str, seconds: float) -> None:
    STAGE_SECONDS.labels(stage).observe(max(0.0, seconds))


@contextlib.contextmanager
def job_in_flight() -> Iterator[None]:
    """Counts a job the gateway follows on a worker while the block runs."""
    GATEWAY_JOBS.inc()
    try:
        yield
    finally:
        GATEWAY_JOBS.dec()


class _StageClock:
    """Turns a job's progress reports into stage durations: a stage lasts from its
    first report to the first report of the next stage (or the end of the job)."""

    def __init__(self) -> None:
        self._stage: str | None = None
        self._since = 0.0

    def enter(self, stage: str) -> None:
        if stage == self._stage:
            return
        now = time.monotonic()
        if self._stage is not None:
            stage_seconds(self._stage, now - self._since)
        self._stage, self._since = stage, now

    def finish(self) -> None:
        if self._stage is not None:
            stage_seconds(self._stage, time.monotonic() - self._since)
            self._stage = None


Build = TypeVar("Build", bound=Callable[[Any, Callable[[Any], None]], Any])


def instrument_build(build: Build) -> Build:
    """Wraps a worker's `build(job, report)`: stage durations from its progress, jobs in
    flight, the job's duration and outcome, and the bytes it published."""

    def run(job: Any, report: Callable[[Any], None]) -> Any:
        clock = _StageClock()

        def timed(progress: Any) -> None:
            clock.enter(progress.stage.name.lower())
            report(progress)

        outcome = "failed"
        started = time.monotonic()
        WORKER_JOBS.inc()
        try:
            result = build(job, timed)
            outcome = "unchanged" if result.unchanged else "reused" if result.reused else "built"
            if outcome == "built":
                bytes_published(result.size_bytes, job.system)
            return result
        finally:
            clock.finish()
            WORKER_JOBS.dec()
            PULLS.labels(outcome).inc()
            PULL_SECONDS.labels(outcome).observe(time.monotonic() - started)

    return run  # type: ignore[return-value]


# --- queue depth, read when scraped ------------------------------------------------------

Pending = Callable[[], Iterable[tuple[Any, str | None, int]]]


class _QueueCollector(Collector):
    def __init__(self) -> None:
        self.pending: Pending | None = None

    def describe(self) -> list[Any]:
        return []  # queue reads happen at scrape time only

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pending = self.pending
        if pending is None:
            return
        try:
            rows = list(pending())
        except Exception as exc:  # a scrape must not fail because the broker is down
            log.warning("metrics: cannot read the job queue: %s", exc)
            return
        waiting = sum(1 for _job, consumer, _attempt in rows if consumer is None)
        family = GaugeMetricFamily("imagegw_queue_jobs",
                                   "Jobs in the gateway's queue: waiting, or claimed by a consumer",
                                   labels=["state"])
        family.add_metric(["waiting"], waiting)
        family.add_metric(["claimed"], len(rows) - waiting)
        yield family


_QUEUE = _QueueCollector()
REGISTRY.register(_QUEUE)


def watch_queue(pending: Pending | None) -> None:
    """Reports the queue's depth from `pending()` (JobQueue.pending) at each scrape;
    None stops reporting it."""
    _QUEUE.pending = pending


# --- the HTTP endpoint ------------------------------------------------------------------

class MetricsEndpoint:
    """`GET /metrics` in Prometheus' text format, from a daemon thread."""

    def __init__(self, address: str, key: str) -> None:
        host, port = parse_host_port(address, key)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=REGISTRY)
        except OSError as exc:
            raise ConfigError(f"{key}: cannot listen on {address}: {exc.strerror or exc}") from exc
        bound = self._server.server_port
        self.address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._server.shutdown()
            self._server.server_close()


def serve(address: str | None, key: str) -> MetricsEndpoint | None:
    """Starts the endpoint on `address` (port 0: any free port); None when unset."""
    if not address:
        return None
    endpoint = MetricsEndpoint(address, key)
    log.info("%s: Prometheus metrics at %s", key, endpoint.url)
    return endpoint
