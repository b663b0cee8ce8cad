"""gRPC server plumbing shared by the gateway and the worker: thread pool,
health checking (grpc.health.v1), server reflection, binding and shutdown."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from imagegw import metrics
from imagegw.errors import ConfigError

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def create_server(max_workers: int = 64) -> grpc.Server:
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=max_workers * 4,
        interceptors=[metrics.server_interceptor()],
    )


def add_health_and_reflection(server: grpc.Server, service_names: Iterable[str]
                              ) -> health.HealthServicer:
    names = list(service_names)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME], server)
    return health_servicer


def bind(server: grpc.Server, address: str) -> str:
    """Binds an insecure port; returns the address with the real port (for port 0)."""
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {address}: {exc}") from exc
    if address.startswith("unix:"):
        return address
    if port == 0:
        raise ConfigError(f"cannot listen on {address}: address in use or not available")
    host = address.rsplit(":", 1)[0]
    return f"{host}:{port}"
