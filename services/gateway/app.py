"""Assembles a gateway process: store, queue, pull manager, dispatcher, gRPC server."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from grpc_health.v1 import health_pb2

from imagegw import metrics
from imagegw.config import Config
from imagegw.errors import BackendUnavailable
from imagegw.gateway.api.servicer import GatewayServicer
from imagegw.gateway.core.dispatch import Dispatcher
from imagegw.gateway.core.pulls import PullManager
from imagegw.gateway.queue import open_queue
from imagegw.gateway.store import open_store
from imagegw.gateway.workers import open_worker_pool
from imagegw.grpcserver import add_health_and_reflection, bind, create_server
from imagegw.v1 import gateway_service_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "imagegw.v1.GatewayService"
#: Seconds between attempts to reach the records and queue after a failed start.
RECOVER_INTERVAL = 5.0
#: Seconds between checks that every in-flight pull still has a queued job.
RECONCILE_INTERVAL = 10.0


class GatewayApp:
    def __init__(self, config: Config, listen: str, worker_addresses: Sequence[str]) -> None:
        self.config = config
        self.store = open_store(config)
        self.queue, self.hub = open_queue(config)
        self.pulls = PullManager(config, self.store, self.queue, self.hub)
        self.workers = open_worker_pool(config, worker_addresses)
        self.dispatcher = Dispatcher(
            self.store, self.queue, self.hub, self.workers,
            consumers=self.workers.consumers(config.worker_slots),
        )
        self.server = create_server()
        gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(self.pulls), self.server)
        self.health = add_health_and_reflection(self.server, [SERVICE_NAME])
        self.address = bind(self.server, listen)
        metrics.watch_queue(self.queue.pending)
        self.metrics = metrics.serve(config.metrics_listen, "MetricsListen")
        self._stopping = threading.Event()

    def start(self) -> None:
        self.server.start()
        log.info("gateway listening on %s (systems: %s)", self.address,
                 ", ".join(sorted(self.config.platforms)))
        if self._recover():
            self.dispatcher.start()
            threading.Thread(target=self._reconcile, name="reconcile", daemon=True).start()
            return
        # The records or the queue are down: serve (with UNAVAILABLE answers and a
        # NOT_SERVING health status) and keep retrying instead of crashing.
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        threading.Thread(target=self._recover_until_ready, name="recover", daemon=True).start()

    def _recover(self) -> bool:
        try:
            resumed = self.pulls.recover()
        except BackendUnavailable as exc:
            log.error("cannot start dispatching: %s; retrying every %.0fs", exc, RECOVER_INTERVAL)
            return False
        if resumed:
            log.info("resumed %d unfinished pulls", resumed)
        return True

    def _recover_until_ready(self) -> None:
        while not self._stopping.wait(RECOVER_INTERVAL):
            if self._recover():
                self.dispatcher.start()
                self._set_health(health_pb2.HealthCheckResponse.SERVING)
                log.info("records and queue reachable again: serving")
                self._reconcile()
                return

    def _reconcile(self) -> None:
        """Re-queues in-flight pulls a lost queue forgot (a Redis restart)."""
        while not self._stopping.wait(RECONCILE_INTERVAL):
            try:
                resumed = self.pulls.recover(min_age=RECONCILE_INTERVAL)
            except BackendUnavailable as exc:
                log.warning("reconcile skipped: %s", exc)
                continue
            if resumed:
                log.warning("re-queued %d pulls whose jobs the queue had lost", resumed)

    def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def stop(self) -> None:
        self._stopping.set()
        self.server.stop(grace=2.0).wait()
        metrics.watch_queue(None)
        if self.metrics is not None:
            self.metrics.close()
        self.dispatcher.stop()
        self.workers.close()
        self.queue.close()
        self.hub.close()
        self.store.close()
