"""Assembles a gateway process: store, queue, pull manager, dispatcher, gRPC server.

The process owns one asyncio event loop (`GatewayApp.loop`, on a thread of its own)
that runs the gRPC server (grpc.aio) and any other asynchronous server added with
`GatewayApp.add_async_server` (the REST API); they share the bounded thread pools
the synchronous core runs on (`GatewayApp.blocking`) and the per-caller limits
(`GatewayApp.fair_share`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from imagegw import metrics
from imagegw.domain.config import Config
from imagegw.domain.errors import BackendUnavailable, ConfigError
from imagegw.gateway.aio import AsyncServer, Blocking, EventLoopThread
from imagegw.gateway.api.edge import AsyncGatewayServicer
from imagegw.gateway.api.servicer import GatewayServicer, Services
from imagegw.gateway.core.dispatch import Dispatcher
from imagegw.gateway.core.expiry import Expirer, ExpiryLoop, check_interval
from imagegw.gateway.core.fairshare import FairShare, ShareLimits
from imagegw.gateway.core.imports import Importer
from imagegw.gateway.core.logins import Logins
from imagegw.gateway.core.presence import check_targets
from imagegw.gateway.core.pulls import PullManager
from imagegw.gateway.core.reconcile import Reconciler, SweepLoop
from imagegw.gateway.core.vault import CredentialVault
from imagegw.gateway.queue import open_queue
from imagegw.gateway.store import open_store
from imagegw.gateway.workers import open_worker_pool
from imagegw.rpc.server import (
    add_aio_health_and_reflection,
    bind,
    create_aio_server,
    is_loopback,
    server_credentials,
)
from imagegw.signatures import load_site_trust
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


def share_limits(config: Config) -> ShareLimits:
    limits = config.limits
    return ShareLimits(max_streams_per_caller=limits.max_streams_per_caller,
                       max_calls_per_caller=limits.max_calls_per_caller,
                       max_streams_total=limits.max_streams_total,
                       max_calls_total=limits.max_calls_total)


def _data_path(config: Config, name: str) -> Path:
    return Path(config.data_dir or ".") / name


def _rest_server(services: Services, blocking: Blocking, fair_share: FairShare) -> AsyncServer:
    """Shifter's REST API (`RestListen`). aiohttp (~8 MiB of modules) is imported here,
    when a configuration asks for it, not when the gateway is."""
    from imagegw.gateway.rest import RestApi, RestServices, build_app, start_rest

    config = services.config
    return start_rest(build_app(
        RestApi(RestServices(config=config, pulls=services.pulls, expirer=services.expirer,
                             importer=services.importer, logins=services.logins)),
        blocking, fair_share), config)


class GatewayApp:
    def __init__(self, config: Config, listen: str, worker_addresses: Sequence[str]) -> None:
        check_listen_security(config, listen)
        self.config = config
        self.store = open_store(config)
        # Records made for another image directory or other hosts are refused before the
        # gateway serves anything (ConfigError naming the setting); a store that cannot
        # be reached yet is checked once it can.
        try:
            check_targets(config, self.store)
            self._targets_checked = True
        except BackendUnavailable:
            self._targets_checked = False
        self.queue, self.hub = open_queue(config)
        self.trust = load_site_trust(config)
        vault = CredentialVault(
            _data_path(config, "credentials"),
            config.credential_key_file or _data_path(config, "credentials.key"))
        self.logins = Logins(config, vault)
        self.pulls = PullManager(config, self.store, self.queue, self.hub,
                                 registry_login=self.logins.credentials_for,
                                 policy_digest=self.trust.policy_digest)
        self.expirer = Expirer(config, self.store, self.pulls)
        self.expiry = ExpiryLoop(self.expirer, check_interval(config))
        self.sweep = SweepLoop(Reconciler(config, self.store, retirement=self.pulls.retirement),
                               config.file_check_interval)
        self.workers = open_worker_pool(config, worker_addresses)
        self.dispatcher = Dispatcher(
            self.store, self.queue, self.hub, self.workers,
            consumers=self.workers.consumers(config.worker_slots),
            credentials=self.logins.credentials_for, lease_seconds=config.job_lease_seconds,
        )
        services = Services(
            config=config, pulls=self.pulls, expirer=self.expirer, logins=self.logins,
            importer=Importer(config, self.store, self.pulls, str(_data_path(config, "imports"))))
        #: The per-caller limits every edge charges (Limits.maxStreamsPerCaller, ...).
        self.fair_share = FairShare(share_limits(config))
        #: The bounded thread pools asynchronous edges run the synchronous core on.
        self.blocking = Blocking(config.limits.gateway_threads)
        #: The process's one asyncio loop, running on its own thread from here on.
        self.loop = EventLoopThread()
        self.loop.start()
        self._async_servers: list[AsyncServer] = []
        self._async_stops: list = []
        self._started = False
        if config.rest_listen:  # Shifter's REST API, on the same loop and core
            check_listen_security(config, config.rest_listen, "RestListen")
            self.add_async_server(_rest_server(services, self.blocking, self.fair_share))
        credentials = (server_credentials(config.tls_certificate, config.tls_key,
                                          config.tls_client_ca)
                       if config.tls_certificate else None)
        try:
            self.address = self.loop.run(self._build_server(
                AsyncGatewayServicer(GatewayServicer(services), self.fair_share, self.blocking),
                listen, credentials))
        except BaseException:
            self.loop.stop()
            self.blocking.shutdown()
            raise
        metrics.watch_queue(self.queue.pending)
        self.metrics = metrics.serve(config.metrics_listen, "MetricsListen")
        self._stopping = threading.Event()

    async def _build_server(self, servicer: AsyncGatewayServicer, listen: str,
                            credentials: grpc.ServerCredentials | None) -> str:
        self.server = create_aio_server()
        gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, self.server)
        self.health = await add_aio_health_and_reflection(self.server, [SERVICE_NAME])
        return bind(self.server, listen, credentials)

    def add_async_server(self, start: AsyncServer) -> None:
        """Runs another asynchronous server (e.g. the REST API) on the gateway's loop.

        `await start()` runs on `self.loop` when the gateway starts (at once if it has);
        it returns a coroutine function that stops the server, awaited at `stop()` with
        the seconds of grace. Such a server runs blocking core calls through
        `self.blocking` (`await app.blocking.run(fn, *args)`) and charges each call to
        its caller with `imagegw.gateway.core.fairshare.Admission(app.fair_share,
        Kind.CALL or Kind.STREAM, peer_host)`:
        `charge(None)` for a call without credential, `charge(uid)` once verified,
        `release()` when the call ends."""
        self._async_servers.append(start)
        if self._started:
            self._async_stops.append(self.loop.run(start()))

    def start(self) -> None:
        self.loop.run(self.server.start())
        self._started = True
        for start in self._async_servers:
            self._async_stops.append(self.loop.run(start()))
        self.expiry.start()
        self.sweep.start()
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
            if not self._targets_checked:
                check_targets(self.config, self.store)
                self._targets_checked = True
            resumed = self.pulls.recover()
        except BackendUnavailable as exc:
            log.error("cannot start dispatching: %s; retrying every %.0fs", exc, RECOVER_INTERVAL)
            return False
        if resumed:
            log.info("resumed %d unfinished pulls", resumed)
        return True

    def _recover_until_ready(self) -> None:
        while not self._stopping.wait(RECOVER_INTERVAL):
            try:
                recovered = self._recover()
            except ConfigError as exc:
                log.error("not serving: %s (%s)", exc, exc.hint or "")
                continue
            if recovered:
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
            self.loop.run(self.health.set(name, status))

    def stop(self, grace: float = 2.0) -> None:
        self._stopping.set()
        self.expiry.stop()
        self.sweep.stop()
        for stop in self._async_stops:
            try:
                self.loop.run(stop(grace))
            except Exception:
                log.exception("an asynchronous server did not stop cleanly")
        self.loop.run(self.server.stop(grace))
        self.loop.stop()
        self.blocking.shutdown()
        metrics.watch_queue(None)
        if self.metrics is not None:
            self.metrics.close()
        self.dispatcher.stop()
        self.workers.close()
        self.queue.close()
        self.hub.close()
        self.store.close()


