"""Assembles a worker process: disk layout, builder, job registry, gRPC server."""

from __future__ import annotations

import logging
import os
import socket

from imagegw import metrics
from imagegw.cache.layout import WorkerPaths
from imagegw.directory import Registration, WorkerDirectory, redis_from_url
from imagegw.domain.config import Config
from imagegw.domain.errors import ConfigError
from imagegw.rpc.server import (
    add_health_and_reflection,
    bind,
    create_server,
    worker_server_credentials,
)
from imagegw.rpc.worker_auth import load_worker_token
from imagegw.v1 import worker_service_pb2_grpc
from imagegw.worker.build import Builder
from imagegw.worker.jobs import JobRegistry
from imagegw.worker.service import WorkerServicer

log = logging.getLogger(__name__)

SERVICE_NAME = "imagegw.v1.WorkerService"


class WorkerApp:
    def __init__(self, config: Config, listen: str, *, advertise: str | None = None,
                 worker_id: str | None = None) -> None:
        if not config.cache_dir or not config.expand_dir:
            raise ConfigError("CacheDirectory and ExpandDirectory are required for a worker")
        self.config = config
        self.paths = WorkerPaths(config.cache_dir, config.expand_dir)
        removed = self.paths.clean_stale_scratch()
        if removed:
            log.info("removed %d scratch directories left by a previous run", removed)
        self.builder = Builder(config, self.paths)
        self.jobs = JobRegistry(metrics.instrument_build(self.builder.build), slots=config.worker_slots)
        self.server = create_server()
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(
            WorkerServicer(self.jobs, load_worker_token(config)), self.server)
        self.health = add_health_and_reflection(self.server, [SERVICE_NAME])
        credentials = worker_server_credentials(config.worker_tls) if config.worker_tls else None
        self.address = bind(self.server, listen, credentials)
        self.metrics = metrics.serve(config.worker_metrics_listen, "WorkerMetricsListen")
        self.registration: Registration | None = None
        if config.broker:
            worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
            self.registration = Registration(
                WorkerDirectory(redis_from_url(config.broker), ttl=config.worker_ttl_seconds), worker_id,
                advertise or self.address, config.platforms.keys(), config.worker_slots)

    def start(self) -> None:
        self.server.start()
        if self.registration is not None:
            self.registration.start()
        log.info("worker listening on %s (systems: %s)%s", self.address,
                 ", ".join(sorted(self.config.platforms)),
                 f", registered as {self.registration.info.worker_id}" if self.registration else "")

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Graceful: refuse new jobs, let running ones finish, then stop."""
        from grpc_health.v1 import health_pb2

        if self.registration is not None:
            self.registration.stop()  # no new jobs come to a draining worker
        self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        finished = self.jobs.drain(drain_timeout)
        if not finished:
            log.warning("stopping with jobs still running; the gateway will retry them")
        self.server.stop(grace=2.0).wait()
        if self.metrics is not None:
            self.metrics.close()
