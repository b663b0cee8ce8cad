"""Assembles a worker process: disk layout, builder, job registry, gRPC server."""

from __future__ import annotations

import logging

from imagegw.config import Config
from imagegw.errors import ConfigError
from imagegw.grpcserver import add_health_and_reflection, bind, create_server
from imagegw.v1 import worker_service_pb2_grpc
from imagegw.worker.build import Builder
from imagegw.worker.jobs import JobRegistry
from imagegw.worker.paths import WorkerPaths
from imagegw.worker.service import WorkerServicer

log = logging.getLogger(__name__)

SERVICE_NAME = "imagegw.v1.WorkerService"


class WorkerApp:
    def __init__(self, config: Config, listen: str) -> None:
        if not config.cache_dir or not config.expand_dir:
            raise ConfigError("CacheDirectory and ExpandDirectory are required for a worker")
        self.config = config
        self.paths = WorkerPaths(config.cache_dir, config.expand_dir)
        removed = self.paths.clean_stale_scratch()
        if removed:
            log.info("removed %d scratch directories left by a previous run", removed)
        self.builder = Builder(config, self.paths)
        self.jobs = JobRegistry(self.builder.build, slots=config.worker_slots)
        self.server = create_server()
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(
            WorkerServicer(self.jobs), self.server)
        self.health = add_health_and_reflection(self.server, [SERVICE_NAME])
        self.address = bind(self.server, listen)

    def start(self) -> None:
        self.server.start()
        log.info("worker listening on %s (systems: %s)", self.address,
                 ", ".join(sorted(self.config.platforms)))

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Graceful: refuse new jobs, let running ones finish, then stop."""
        from grpc_health.v1 import health_pb2

        self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        finished = self.jobs.drain(drain_timeout)
        if not finished:
            log.warning("stopping with jobs still running; the gateway will retry them")
        self.server.stop(grace=2.0).wait()
