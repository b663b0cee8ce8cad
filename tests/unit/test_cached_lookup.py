"""Lookups answered from the gateway's lookup cache without a thread hop (issue 21).

`PullManager.cached_lookup` hands the asynchronous edge what `lookup` would answer from
its cache, for that caller only; `GatewayServicer.cached_lookup` answers from it only
calls that carry no credential. On a real SQLite store and in-process queue; the edge's
test serves it on a real grpc.aio server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from imagegw.domain.errors import ImageNotFound, InvalidRequest
from imagegw.domain.model import ImageState
from imagegw.gateway.aio import Blocking
from imagegw.gateway.api.edge import AsyncGatewayServicer
from imagegw.gateway.api.servicer import GatewayServicer
from imagegw.gateway.core import pulls as pulls_module
from imagegw.gateway.core.access import ANONYMOUS_CALLER
from imagegw.gateway.core.expiry import Expirer
from imagegw.gateway.core.fairshare import FairShare, Kind, ShareLimits
from imagegw.gateway.core.pulls import PullManager
from imagegw.gateway.queue import MemoryJobQueue, MemoryProgressHub
from imagegw.gateway.store import SqliteImageStore
from imagegw.rpc.server import bind, create_aio_server
from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import gateway_service_pb2_grpc, image_pb2
from tests.unit.test_trust_core import (
    ADMIN,
    ALICE,
    BOB,
    SYSTEM,
    Clock,
    finish,
    make_config,
    publish,
    pull,
)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[PullManager, SqliteImageStore, Clock]]:
    store = SqliteImageStore(str(tmp_path / "records.sqlite3"))
    clock = Clock()
    pulls = PullManager(make_config(tmp_path), store, MemoryJobQueue(), MemoryProgressHub(),
                        clock=clock)
    yield pulls, store, clock
    store.close()


def ready(world, tmp_path: Path, reference: str, image_id: str, users=()) -> None:
    pulls, store, clock = world
    publish(tmp_path, finish(store, pull(pulls, ALICE, reference, users), image_id, clock.now))


def servicer_of(pulls: PullManager) -> GatewayServicer:
    return GatewayServicer(SimpleNamespace(config=pulls.config, pulls=pulls,  # type: ignore[arg-type]
                                           expirer=None, importer=None, logins=None))


def test_a_ready_lookup_is_cached_for_the_caller_who_made_it_only(world, tmp_path) -> None:
    pulls, _store, _clock = world
    ready(world, tmp_path, "app:1", "a" * 64)
    assert pulls.cached_lookup(SYSTEM, "docker", "app:1", ALICE) is None  # not looked up yet
    looked_up = pulls.lookup(SYSTEM, "docker", "app:1", ALICE)
    assert looked_up.state == ImageState.READY
    assert pulls.cached_lookup(SYSTEM, "docker", "app:1", ALICE) is looked_up
    # Another viewer has an entry of their own, made by their own lookup.
    assert pulls.cached_lookup(SYSTEM, "docker", "app:1", BOB) is None
    assert pulls.cached_lookup(SYSTEM, "docker", "app:1", ANONYMOUS_CALLER) is None
    for_anyone = pulls.lookup(SYSTEM, "docker", "app:1", ANONYMOUS_CALLER)
    assert pulls.cached_lookup(SYSTEM, "docker", "app:1", ANONYMOUS_CALLER) is for_anyone


def test_a_cached_private_image_is_never_handed_to_a_caller_outside_its_acl(
        world, tmp_path) -> None:
    pulls, _store, _clock = world
    ready(world, tmp_path, "secret:1", "b" * 64, users=(ALICE.uid,))
    assert pulls.lookup(SYSTEM, "docker", "secret:1", ALICE).state == ImageState.READY
    for stranger in (BOB, ANONYMOUS_CALLER):
        assert pulls.cached_lookup(SYSTEM, "docker", "secret:1", stranger) is None
        with pytest.raises(ImageNotFound):
            pulls.lookup(SYSTEM, "docker", "secret:1", stranger)
        assert pulls.cached_lookup(SYSTEM, "docker", "secret:1", stranger) is None


def test_expiring_an_image_drops_its_cached_lookups(world, tmp_path) -> None:
    pulls, store, clock = world
    ready(world, tmp_path, "old:1", "c" * 64)
    assert pulls.lookup(SYSTEM, "docker", "old:1", ANONYMOUS_CALLER).state == ImageState.READY
    Expirer(pulls.config, store, pulls, clock=clock).expire_image(SYSTEM, "docker", "old:1",
                                                                  ADMIN)
    assert pulls.cached_lookup(SYSTEM, "docker", "old:1", ANONYMOUS_CALLER) is None
    assert pulls.lookup(SYSTEM, "docker", "old:1", ANONYMOUS_CALLER).state == ImageState.EXPIRED


def test_a_cached_lookup_lasts_only_the_cache_seconds(world, tmp_path, monkeypatch) -> None:
    pulls, _store, _clock = world
    ready(world, tmp_path, "brief:1", "d" * 64)
    monkeypatch.setattr(pulls_module, "LOOKUP_CACHE_SECONDS", 0.0)
    pulls.lookup(SYSTEM, "docker", "brief:1", ALICE)
    assert pulls.cached_lookup(SYSTEM, "docker", "brief:1", ALICE) is None


def test_only_calls_without_a_credential_are_answered_from_the_cache(world, tmp_path) -> None:
    pulls, _store, _clock = world
    ready(world, tmp_path, "app:2", "e" * 64)
    servicer = servicer_of(pulls)
    request = pb.LookupImageRequest(system=SYSTEM, reference="app:2")
    assert servicer.cached_lookup(request, ()) is None  # not looked up yet
    pulls.lookup(SYSTEM, "docker", "app:2", ANONYMOUS_CALLER)
    answer = servicer.cached_lookup(request, ())
    assert answer is not None and answer.image.state == image_pb2.IMAGE_STATE_READY
    assert answer.image.reference.endswith("app:2")
    # A credential names a user: munged must check it, on a pool thread, never the loop.
    assert servicer.cached_lookup(request, [("authentication", "MUNGE:x")]) is None
    assert servicer.cached_lookup(request, [("Authentication", "MUNGE:x")]) is None


def test_a_bad_request_is_refused_before_the_cache_is_read(world) -> None:
    servicer = servicer_of(world[0])
    with pytest.raises(InvalidRequest, match="system is required"):
        servicer.cached_lookup(pb.LookupImageRequest(reference="app:1"), ())
    with pytest.raises(InvalidRequest, match="longer than"):
        servicer.cached_lookup(pb.LookupImageRequest(system=SYSTEM, reference="x" * 2000),
                               ())


def test_the_edge_charges_a_lookup_answered_from_the_cache_and_refuses_one_too_many(
        world, tmp_path) -> None:
    pulls, _store, _clock = world
    ready(world, tmp_path, "app:3", "f" * 64)
    share = FairShare(ShareLimits(max_calls_per_caller=1))
    blocking = Blocking(2)
    edge = AsyncGatewayServicer(servicer_of(pulls), share, blocking)
    request = pb.LookupImageRequest(system=SYSTEM, reference="app:3")

    async def lookups() -> None:
        server = create_aio_server()
        gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(edge, server)
        address = bind(server, "127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
                first = await stub.LookupImage(request, timeout=30)  # a miss: on the pool
                assert first.image.state == image_pb2.IMAGE_STATE_READY
                assert pulls.cached_lookup(SYSTEM, "docker", "app:3", ANONYMOUS_CALLER)
                assert await stub.LookupImage(request, timeout=30) == first  # on the loop
                assert share.total(Kind.CALL) == 0  # each charge given back
                held = share.admit("peer:127.0.0.1", Kind.CALL)  # a call of this host's
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.LookupImage(request, timeout=30)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "Limits.maxCallsPerCaller (1)" in (refused.value.details() or "")
                held.release()
                assert await stub.LookupImage(request, timeout=30) == first
        finally:
            await server.stop(None)

    try:
        asyncio.run(lookups())
    finally:
        blocking.shutdown()
