"""Issue 18: the gateway process owns one asyncio loop; other asynchronous servers (the REST
API) run on it through `GatewayApp.add_async_server`, beside the gRPC server."""

from __future__ import annotations

import asyncio
import socket
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagegw.domain.config import parse_config
from imagegw.gateway.app import GatewayApp
from imagegw.gateway.core.fairshare import Admission, Kind
from tests.support.services import embedded_config, refused_address


def test_an_added_asynchronous_server_runs_on_the_gateways_loop_until_it_stops(tmp_path):
    config = parse_config(embedded_config(tmp_path), data_dir=str(tmp_path / "data"))
    app = GatewayApp(config, "127.0.0.1:0", [refused_address()])
    seen: dict[str, object] = {}

    async def start_echo():
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # What a REST handler does: charge the caller, run the core on the pools.
            admission = Admission(app.fair_share, Kind.CALL, writer.get_extra_info("peername")[0])
            admission.charge(None)
            try:
                line = await reader.readline()
                seen["pool"] = await app.blocking.run(lambda: threading.current_thread().name)
                seen["open"] = app.fair_share.open("peer:127.0.0.1", Kind.CALL)
                writer.write(line.upper())
                await writer.drain()
            finally:
                admission.release()
                writer.close()

        seen["loop"] = threading.current_thread().name
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        seen["port"] = server.sockets[0].getsockname()[1]

        async def stop(grace: float) -> None:
            seen["grace"] = grace
            server.close()
            await server.wait_closed()
        return stop

    app.add_async_server(start_echo)
    assert "port" not in seen  # started with the gateway, not before
    app.start()
    port = seen["port"]
    assert isinstance(port, int)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"ping\n")
            # Read to the end: the server releases the charge before it closes.
            assert client.makefile("rb").read() == b"PING\n"
        assert seen["loop"] == "gateway-loop"
        assert str(seen["pool"]).startswith("gateway-fast")
        assert seen["open"] == 1 and app.fair_share.total(Kind.CALL) == 0
        with grpc.insecure_channel(app.address) as channel:  # gRPC on the same loop
            stub = health_pb2_grpc.HealthStub(channel)
            health = stub.Check(  # type: ignore[attr-defined]  # untyped health stub
                health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        app.stop()
    assert seen["grace"] == 2.0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
