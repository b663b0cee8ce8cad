"""Assembles a gateway process: store, queue, pull manager, dispatcher, gRPC server."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from grpc_health.v1 import health_pb2

from imagegw import metrics
from imagegw.domain.config import Config
from imagegw.domain.errors import BackendUnavailable, ConfigError
from imagegw.gateway.api.servicer import GatewayServicer, Services
from imagegw.gateway.core.dispatch import Dispatcher
from imagegw.gateway.core.expiry import Expirer, ExpiryLoop, check_interval
from imagegw.gateway.core.imports import Importer
from imagegw.gateway.core.logins import Logins
from imagegw.gateway.core.pulls import PullManager
from imagegw.gateway.core.vault import CredentialVault
from imagegw.gateway.queue import open_queue
from imagegw.gateway.rest import RestApi, RestServices, RestThread
from imagegw.gateway.store import open_store
from imagegw.gateway.workers import open_worker_pool
from imagegw.rpc.server import (
    add_health_and_reflection,
    bind,
    create_server,
    is_loopback,
    server_credentials,
)
from imagegw.v1 import gateway_service_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "imagegw.v1.GatewayService"
#: Seconds between attempts to reach the records and queue after a failed start.
RECOVER_INTERVAL = 5.0
#: Seconds between checks that every in-flight pull still has a queued job.
RECONCILE_INTERVAL = 10.0


def check_listen_security(config: Config, listen: str, key: str = "ListenAddress") -> None:
    """Refuses a non-loopback listen address without TLS and MUNGE on every system,
    unless AllowInsecureListen says so."""
    if is_loopback(listen) or config.allow_insecure_listen:
        return
    missing = []
    if not config.tls_certificate:
        missing.append("TLS (TLSCertificate and TLSKey)")
    unauthenticated = sorted(n for n, p in config.platforms.items() if not p.munge_socket)
    if unauthenticated:
        missing.append("authentication (mungeSocketPath on " + ", ".join(unauthenticated) + ")")
    if missing:
        raise ConfigError(
            f"{key} {listen} is reachable from other hosts, but the gateway has no "
            + " and no ".join(missing),
            hint="configure them, listen on 127.0.0.1, or set AllowInsecureListen: true")


def _data_path(config: Config, name: str) -> Path:
    return Path(config.data_dir or ".") / name


class GatewayApp:
    def __init__(self, config: Config, listen: str, worker_addresses: Sequence[str]) -> None:
        check_listen_security(config, listen)
        self.config = config
        self.store = open_store(config)
        self.queue, self.hub = open_queue(config)
        self.pulls = PullManager(config, self.store, self.queue, self.hub)
        vault = CredentialVault(
            _data_path(config, "credentials"),
            config.credential_key_file or _data_path(config, "credentials.key"))
        self.logins = Logins(config, vault)
        self.expirer = Expirer(config, self.store, self.pulls)
        self.expiry = ExpiryLoop(self.expirer, check_interval(config))
        self.workers = open_worker_pool(config, worker_addresses)
        self.dispatcher = Dispatcher(
            self.store, self.queue, self.hub, self.workers,
            consumers=self.workers.consumers(config.worker_slots),
            credentials=self.logins.credentials_for,
        )
        self.server = create_server()
        services = Services(
            config=config, pulls=self.pulls, expirer=self.expirer, logins=self.logins,
            importer=Importer(config, self.store, self.pulls, str(_data_path(config, "imports"))))
        self.rest = _rest_thread(config, services)
        gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(services), self.server)
        self.health = add_health_and_reflection(self.server, [SERVICE_NAME])
        credentials = (server_credentials(config.tls_certificate, config.tls_key,
                                          config.tls_client_ca)
                       if config.tls_certificate else None)
        self.address = bind(self.server, listen, credentials)
        metrics.watch_queue(self.queue.pending)
        self.metrics = metrics.serve(config.metrics_listen, "MetricsListen")
        self._stopping = threading.Event()

    def start(self) -> None:
        self.server.start()
        if self.rest is not None:
            self.rest.start()
        self.expiry.start()
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
        self.expiry.stop()
        self.server.stop(grace=2.0).wait()
        if self.rest is not None:
            self.rest.stop()
        metrics.watch_queue(None)
        if self.metrics is not None:
            self.metrics.close()
        self.dispatcher.stop()
        self.workers.close()
        self.queue.close()
        self.hub.close()
        self.store.close()


def _rest_thread(config: Config, services: Services) -> RestThread | None:
    """Shifter's REST API on RestListen (off when unset), over the same core objects."""
    if not config.rest_listen:
        return None
    check_listen_security(config, config.rest_listen, "RestListen")
    return RestThread(RestApi(RestServices(
        config=config, pulls=services.pulls, expirer=services.expirer,
        importer=services.importer, logins=services.logins)), config, config.rest_listen)
