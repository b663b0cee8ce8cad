"""Lookup load: `python -m bench.load client ...` drives LookupImage from N concurrent
clients for a fixed time and prints one JSON line (count, latencies); `python -m
bench.load noop [--aio] ADDRESS_FILE` serves a GatewayService whose LookupImage does
nothing, on the project's threaded server stack (imagegw.rpc.server.create_server), or with
--aio on the asyncio one the gateway runs (create_aio_server), for comparison."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time

import grpc

from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import gateway_service_pb2_grpc as pb_grpc
from imagegw.v1 import image_pb2

#: Channels the clients of one process spread over (as separate job submissions would).
CHANNELS = 8


async def _drive(address: str, system: str, reference: str, clients: int,
                 duration: float) -> dict:
    channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    stubs = [pb_grpc.GatewayServiceStub(channel) for channel in channels]
    request = pb.LookupImageRequest(system=system, reference=reference)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def client(number: int) -> None:
        nonlocal errors
        stub = stubs[number % CHANNELS]
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                await stub.LookupImage(request, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)

    # Warm the channels up before counting.
    for stub in stubs:
        await stub.LookupImage(request, timeout=30)
    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    return {"count": len(latencies), "errors": errors, "elapsed": elapsed,
            "latencies": sorted(latencies)}


class _NoopGateway(pb_grpc.GatewayServiceServicer):
    def LookupImage(self, request, context):  # noqa: N802 - gRPC's naming
        return pb.LookupImageResponse(image=image_pb2.Image(id="0" * 64))


def _serve_noop(address_file: str) -> None:
    from imagegw.rpc.server import add_health_and_reflection, bind, create_server

    server = create_server()
    # The generated base class declares every method abstract; the no-op answers lookups only.
    pb_grpc.add_GatewayServiceServicer_to_server(_NoopGateway(), server)  # type: ignore[abstract]
    add_health_and_reflection(server, [pb.DESCRIPTOR.services_by_name["GatewayService"]
                                       .full_name])
    address = bind(server, "127.0.0.1:0")
    server.start()
    with open(address_file, "w") as out:
        out.write(address)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


class _AioNoopGateway(pb_grpc.GatewayServiceServicer):
    async def LookupImage(self, request, context):  # noqa: N802 - gRPC's naming
        return pb.LookupImageResponse(image=image_pb2.Image(id="0" * 64))


async def _serve_aio_noop(address_file: str) -> None:
    """The no-op on the gateway's own stack: the asyncio server, its interceptors, health
    and reflection (imagegw.rpc.server.create_aio_server)."""
    from imagegw.rpc.server import add_aio_health_and_reflection, bind, create_aio_server

    server = create_aio_server()
    pb_grpc.add_GatewayServiceServicer_to_server(_AioNoopGateway(), server)  # type: ignore[abstract]
    await add_aio_health_and_reflection(server, [pb.DESCRIPTOR.services_by_name["GatewayService"]
                                                 .full_name])
    address = bind(server, "127.0.0.1:0")
    await server.start()
    with open(address_file, "w") as out:
        out.write(address)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    sub = parser.add_subparsers(dest="command", required=True)
    client = sub.add_parser("client")
    client.add_argument("address")
    client.add_argument("--system", default="default")
    client.add_argument("--reference", required=True)
    client.add_argument("--clients", type=int, default=100)
    client.add_argument("--duration", type=float, default=5.0)
    noop = sub.add_parser("noop")
    noop.add_argument("address_file")
    noop.add_argument("--aio", action="store_true", help="on the asyncio server (the gateway's)")
    args = parser.parse_args(argv)
    if args.command == "noop":
        if args.aio:
            asyncio.run(_serve_aio_noop(args.address_file))
        else:
            _serve_noop(args.address_file)
        return
    result = asyncio.run(_drive(args.address, args.system, args.reference, args.clients,
                                args.duration))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
