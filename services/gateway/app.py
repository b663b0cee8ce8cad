"""Assembles a gateway process: store, queue, pull manager, dispatcher, gRPC server."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from imagegw.config import Config
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

    def start(self) -> None:
        resumed = self.pulls.recover()
        if resumed:
            log.info("resumed %d unfinished pulls", resumed)
        self.dispatcher.start()
        self.server.start()
        log.info("gateway listening on %s (systems: %s)", self.address,
                 ", ".join(sorted(self.config.platforms)))

    def stop(self) -> None:
        self.server.stop(grace=2.0).wait()
        self.dispatcher.stop()
        self.workers.close()
        self.queue.close()
        self.store.close()
