"""Issue 18, item 1: one caller, then a dozen, holding every PullImage stream the limits let
them on a pull that never ends, while another caller's lookups and health checks answer.

The pull's registry accepts connections and never answers. Anonymous callers are told apart
by peer host; the test gives each caller its own source address through a loopback relay
(`tests.support.relay`: 127.0.0.2, 127.0.0.3, ...), since gRPC's Python client cannot bind one."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Protocol

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagegw.domain.config import Limits
from imagegw.domain.model import ImageState, Progress, Stage
from imagegw.gateway.queue import ProgressEvent, RedisProgressHub
from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import gateway_service_pb2_grpc as pb_grpc
from imagegw.v1 import image_pb2
from tests.integration.trust_site import metadata, trust_config
from tests.support.proxy import Fault, RegistryProxy, Reply, Request, SilentServer
from tests.support.relay import SourceRelay
from tests.support.rpc import details
from tests.support.services import embedded_config, start_service

SYSTEM = "default"
STUCK = "testreg/stuck/app:1"
MAX_STREAMS = Limits().max_streams_per_caller  # the default a site gets
THREADS = 4
DOZEN = 12


@pytest.fixture(scope="module")
def silent():
    server = SilentServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, silent):
    workdir = tmp_path_factory.mktemp("fairshare")
    config = embedded_config(workdir, registry_url=silent.url,
                             Limits={"httpTimeout": 600, "httpRetries": 0,
                                     "gatewayThreads": THREADS})
    service = start_service("serve", config, workdir)
    yield service
    service.stop()


class HeldLogin(Fault):
    """Answers the registry's /v2/ check with headers, then holds the body until
    `release` is set: a registry login in flight for as long as the test needs."""

    canned = True

    def __init__(self) -> None:
        super().__init__(r"^/v2/$", times=None)
        self.release = threading.Event()

    def apply(self, request: Request, reply: Reply | None) -> Reply:
        return Reply(200, [("Content-Type", "application/json")], b"{}", hold_at=0,
                     release=self.release)


class PullStream(Protocol):
    """A PullImage call as its caller holds it: read an answer at a time, or cancel it."""

    def __next__(self) -> pb.PullImageResponse: ...

    def cancel(self) -> bool: ...


class Caller:
    """An anonymous caller whose connections come from `source` (one channel, one peer)."""

    def __init__(self, address: str, source: str) -> None:
        self.relay = SourceRelay(address, source)
        self.channel = grpc.insecure_channel(self.relay.address)
        self.stub = pb_grpc.GatewayServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.streams: list[PullStream] = []

    def open_stream(self) -> pb.PullImageResponse:
        """Opens a PullImage stream of the stuck image and reads only its first answer."""
        stream = self.stub.PullImage(pb.PullImageRequest(system=SYSTEM, reference=STUCK),
                                     timeout=300)
        self.streams.append(stream)
        return next(stream)

    def close(self) -> None:
        for stream in self.streams:
            stream.cancel()
        self.channel.close()
        self.relay.close()


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads line for {pid}")


def _p99(seconds: list[float]) -> float:
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _probe(caller: Caller, rounds: int = 40) -> tuple[float, float]:
    """p99 seconds of LookupImage and of Health.Check, each asserted to answer."""
    lookups, checks = [], []
    for _ in range(rounds):
        started = time.monotonic()
        answer = caller.stub.LookupImage(
            pb.LookupImageRequest(system=SYSTEM, reference=STUCK), timeout=10)
        lookups.append(time.monotonic() - started)
        assert answer.image.state in (image_pb2.IMAGE_STATE_QUEUED, image_pb2.IMAGE_STATE_PULLING)
        started = time.monotonic()
        health = caller.health.Check(  # type: ignore[attr-defined]  # untyped health stub
            health_pb2.HealthCheckRequest(), timeout=10)
        checks.append(time.monotonic() - started)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    return _p99(lookups), _p99(checks)


def _fill(caller: Caller, errors: list[BaseException]) -> None:
    try:
        while len(caller.streams) < MAX_STREAMS:
            first = caller.open_stream()
            assert first.image.state in (image_pb2.IMAGE_STATE_QUEUED,
                                         image_pb2.IMAGE_STATE_PULLING)
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)


def test_lookups_and_health_answer_while_callers_hold_every_stream_they_may(gateway):
    hog = Caller(gateway.address, "127.0.0.2")
    others = [Caller(gateway.address, f"127.0.0.{3 + index}") for index in range(DOZEN)]
    probe = Caller(gateway.address, "127.0.0.100")
    try:
        # The pull starts: its job holds worker threads, whoever watches it.
        hog.open_stream()
        _probe(probe, 5)
        time.sleep(1)
        one_stream_threads = _threads(gateway.process.pid)

        # One caller holds every stream it may (a pull joined MAX_STREAMS times, unread)...
        errors: list[BaseException] = []
        _fill(hog, errors)
        assert not errors, errors
        with pytest.raises(grpc.RpcError) as refused:
            hog.open_stream()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Limits.maxStreamsPerCaller" in details(refused.value)
        # ...and another caller is answered at once.
        lookup_p99, health_p99 = _probe(probe)
        print(f"p99 with one caller at its cap: lookup {lookup_p99:.3f}s, "
              f"health {health_p99:.3f}s")
        assert lookup_p99 < 1.0 and health_p99 < 1.0, (lookup_p99, health_p99)
        one_caller_threads = _threads(gateway.process.pid)

        # A dozen more callers do the same, at once; each gets its whole budget.
        fillers = [threading.Thread(target=_fill, args=(caller, errors)) for caller in others]
        for thread in fillers:
            thread.start()
        for thread in fillers:
            thread.join(120)
        assert not errors, errors
        assert sum(len(caller.streams) for caller in [hog, *others]) == (DOZEN + 1) * MAX_STREAMS + 1
        lookup_p99, health_p99 = _probe(probe)
        print(f"p99 with {DOZEN + 1} callers at their caps: lookup {lookup_p99:.3f}s, "
              f"health {health_p99:.3f}s")
        assert lookup_p99 < 1.0 and health_p99 < 1.0, (lookup_p99, health_p99)
        dozen_threads = _threads(gateway.process.pid)

        # The streams cost no thread: from one to (DOZEN + 1) * MAX_STREAMS of them, the
        # gateway's thread count grows at most by its pool's threads starting (gatewayThreads).
        print(f"gateway threads: {one_stream_threads} with 1 stream, {one_caller_threads} with "
              f"{MAX_STREAMS}, {dozen_threads} with {(DOZEN + 1) * MAX_STREAMS}")
        assert one_caller_threads <= one_stream_threads + THREADS
        assert dozen_threads <= one_stream_threads + THREADS < (DOZEN + 1) * MAX_STREAMS

        # A stream the hog closes is given back to it.
        hog.streams[0].cancel()
        deadline = time.monotonic() + 10
        while True:
            try:
                hog.open_stream()
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline, "the closed stream was never given back"
                time.sleep(0.1)

        # SIGTERM with every stream open: the gateway ends them and exits cleanly.
        gateway.stop()
        assert gateway.process.returncode == 0, gateway.log()[-3000:]
        with pytest.raises(grpc.RpcError) as ended:
            next(others[0].streams[0])
        assert ended.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    finally:
        for caller in [hog, *others, probe]:
            caller.close()


def test_each_munge_user_on_one_host_has_a_budget_of_their_own_and_health_is_never_capped(
        tmp_path, silent, munge_socket):
    held = HeldLogin()
    login_registry = RegistryProxy(silent.url)
    login_registry.faults.append(held)
    config = trust_config(tmp_path, munge_socket, registry_url=silent.url,
                          Limits={"httpTimeout": 600, "httpRetries": 0, "gatewayThreads": 2,
                                  "maxStreamsPerCaller": 2, "maxStreamsTotal": 8,
                                  "maxCallsPerCaller": 2})
    config["Platforms"][SYSTEM]["allowAnonymousPull"] = True
    config["Locations"]["loginreg"] = {"remotetype": "dockerv2", "url": login_registry.url}
    service = start_service("serve", config, tmp_path)
    streams = []
    channel = service.channel()  # every caller comes from 127.0.0.1
    stub = pb_grpc.GatewayServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)

    def open_stream(user):
        stream = stub.PullImage(pb.PullImageRequest(system=SYSTEM, reference=STUCK),
                                timeout=300, metadata=metadata(munge_socket, user))
        streams.append(stream)
        return next(stream)

    def lookup(user):
        return stub.LookupImage(pb.LookupImageRequest(system=SYSTEM, reference=STUCK),
                                timeout=10, metadata=metadata(munge_socket, user))

    never = threading.Event()
    importer = Caller(service.address, "127.0.0.9")

    def silence():  # an import that never sends its header
        never.wait()
        yield from ()

    try:
        # Two imports that never send a header (from another host: an import is counted by
        # peer host until its header names the system): they hold no thread, the logins
        # below get both slow-pool threads; a third is refused.
        stalled = [importer.stub.ImportImage.future(silence(), timeout=120,
                                                    metadata=metadata(munge_socket, "bin"))
                   for _ in range(3)]
        with pytest.raises(grpc.RpcError) as third:
            stalled[2].result(timeout=30)
        assert third.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "callers from 127.0.0.9 (by address): 2 streams open" in details(third.value)
        for user in ("root", "root", "nobody", "nobody"):
            assert open_stream(user).image.state in (image_pb2.IMAGE_STATE_QUEUED,
                                                     image_pb2.IMAGE_STATE_PULLING)
        with pytest.raises(grpc.RpcError) as refused:
            open_stream("root")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "uid 0: 2 streams open already" in details(refused.value)
        assert "Limits.maxStreamsPerCaller (2)" in details(refused.value)
        # Anonymous callers from the same host are counted apart from its users.
        open_stream(None)
        open_stream(None)
        with pytest.raises(grpc.RpcError) as everyone:
            open_stream("daemon")
        assert everyone.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Limits.maxStreamsTotal (8)" in details(everyone.value)
        # A user at their stream cap still looks up, and health checks are never capped.
        assert lookup("root").image.state in (image_pb2.IMAGE_STATE_QUEUED,
                                              image_pb2.IMAGE_STATE_PULLING)
        for _ in range(20):
            reply = health.Check(  # type: ignore[attr-defined]  # untyped health stub
                health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        # Two registry logins of root's hang at the registry: root's calls are all in flight,
        # and every slow-pool thread is busy; nobody's lookups do not wait behind them.
        logins = [stub.Login.future(pb.LoginRequest(system=SYSTEM, registry="loginreg",
                                                    username="u", password="p"),
                                    timeout=60, metadata=metadata(munge_socket, "root"))
                  for _ in range(2)]
        deadline = time.monotonic() + 30
        while login_registry.count("GET", r"^/v2/$") < 2:
            assert time.monotonic() < deadline, "the logins never reached the registry"
            time.sleep(0.05)
        with pytest.raises(grpc.RpcError) as busy:
            lookup("root")
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Limits.maxCallsPerCaller (2)" in details(busy.value)
        assert lookup("nobody").image.state in (image_pb2.IMAGE_STATE_QUEUED,
                                                image_pb2.IMAGE_STATE_PULLING)
        held.release.set()
        assert [login.result().registry for login in logins] == ["loginreg", "loginreg"]
        assert lookup("root").image.state in (image_pb2.IMAGE_STATE_QUEUED,
                                              image_pb2.IMAGE_STATE_PULLING)
        assert not any(future.done() for future in stalled[:2])
    finally:
        held.release.set()
        never.set()
        importer.close()
        for stream in streams:
            stream.cancel()
        channel.close()
        service.stop()
        login_registry.stop()


def test_redis_progress_watchers_share_one_reader_thread(redis_url):
    """With a Redis Broker too, a watched pull costs no thread per watcher: one reader
    serves every subscription and wakes each waiter (as the asyncio edge waits)."""
    hub = RedisProgressHub(redis.Redis.from_url(redis_url))
    before = threading.active_count()
    woken = threading.Event()
    subscriptions = [hub.subscribe(f"job-{n % 10}") for n in range(60)]
    try:
        assert threading.active_count() <= before + 1
        subscriptions[-1].notify(woken.set)
        woken.clear()
        event = ProgressEvent(state=int(ImageState.PULLING), progress=Progress(Stage.DOWNLOADING))
        hub.publish("job-9", event)
        assert woken.wait(5)
        assert subscriptions[-1].get(0) == event
        assert subscriptions[9].get(5) == event  # the same channel, subscribed once
        assert subscriptions[0].get(0.2) is None
    finally:
        for subscription in subscriptions:
            subscription.close()
        hub.close()
