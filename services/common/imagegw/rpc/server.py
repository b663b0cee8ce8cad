"""gRPC server plumbing shared by the gateway and the worker: the threaded server
(the worker's) and the asyncio one (the gateway's, `create_aio_server`), health
checking (grpc.health.v1, either flavour), server reflection, binding (plain or
TLS, with client certificates when asked) and shutdown."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from imagegw.domain.config import WorkerTls
from imagegw.domain.errors import ConfigError
from imagegw.rpc.metrics import aio_server_interceptor, server_interceptor

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]


def create_server(max_workers: int = 64) -> grpc.Server:
    """A threaded server: each call holds one of `max_workers` threads while it runs."""
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        options=_OPTIONS,
        maximum_concurrent_rpcs=max_workers * 4,
        interceptors=[server_interceptor()],
    )


def create_aio_server() -> grpc.aio.Server:
    """An asyncio server (create it on the loop that will run it): calls are coroutines,
    so a waiting stream holds no thread. It sets no overall cap on calls, which would
    refuse health checks too: callers are capped one by one by the servicer's limits."""
    return grpc.aio.server(options=_OPTIONS, interceptors=[aio_server_interceptor()])


def add_health_and_reflection(server: grpc.Server, service_names: Iterable[str]
                              ) -> health.HealthServicer:
    names = list(service_names)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _add_reflection(server, names)
    return health_servicer


async def add_aio_health_and_reflection(server: grpc.aio.Server, service_names: Iterable[str]
                                        ) -> health_aio.HealthServicer:
    """The same on an asyncio server (on its loop): the aio health servicer, whose `set`
    is a coroutine."""
    names = list(service_names)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _add_reflection(server, names)
    return health_servicer


def _add_reflection(server: grpc.Server | grpc.aio.Server, names: list[str]) -> None:
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME], server)


def server_credentials(certificate: str, key: str, client_ca: str = "") -> grpc.ServerCredentials:
    """TLS credentials from PEM files (config keys TLSCertificate, TLSKey, TLSClientCA);
    with a client CA, clients must present a certificate it signed (mutual TLS)."""
    def read(path: str, name: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from exc

    chain = read(certificate, "TLSCertificate")
    private_key = read(key, "TLSKey")
    roots = read(client_ca, "TLSClientCA") if client_ca else None
    return grpc.ssl_server_credentials([(private_key, chain)], root_certificates=roots,
                                       require_client_auth=roots is not None)


def _read_pem(path: str, name: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from exc


def worker_server_credentials(tls: WorkerTls) -> grpc.ServerCredentials:
    """A worker's side of WorkerTLS: its certificate, and gateways must present one."""
    return grpc.ssl_server_credentials(
        [(_read_pem(tls.key, "WorkerTLS.key"), _read_pem(tls.certificate, "WorkerTLS.certificate"))],
        root_certificates=_read_pem(tls.ca, "WorkerTLS.ca"), require_client_auth=True)


def worker_channel_credentials(tls: WorkerTls) -> grpc.ChannelCredentials:
    """A gateway's side of WorkerTLS: trusts workers signed by the CA, shows its certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(tls.ca, "WorkerTLS.ca"),
        private_key=_read_pem(tls.key, "WorkerTLS.key"),
        certificate_chain=_read_pem(tls.certificate, "WorkerTLS.certificate"))


def is_loopback(address: str) -> bool:
    """Whether HOST:PORT (or unix:PATH) can only be reached from this host."""
    if address.startswith("unix:"):
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything


def bind(server: grpc.Server | grpc.aio.Server, address: str,
         credentials: grpc.ServerCredentials | None = None) -> str:
    """Binds a port, TLS when `credentials` are given; returns the address with the
    real port (for port 0)."""
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {address}: {exc}") from exc
    if address.startswith("unix:"):
        return address
    if port == 0:
        raise ConfigError(f"cannot listen on {address}: address in use or not available")
    host = address.rsplit(":", 1)[0]
    return f"{host}:{port}"
