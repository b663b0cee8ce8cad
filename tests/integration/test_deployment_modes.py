"""Issue 5: Shifter's three deployment models, each as real processes.

Gateway and workers run as separate `imagegw gateway` / `imagegw worker` processes
sharing a real redis-server; the remote mode publishes over a real sshd. The seed
configurations from Shifter's deployment guide are used with only paths changed
(and MongoDBURI replaced by the SQLite data directory: no mongod can run here)."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import time
from pathlib import Path

import grpc
import pytest

from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import image_pb2
from tests.support import layers as L
from tests.support.images import push_image
from tests.support.proxy import RegistryProxy, Trickle
from tests.support.redis_server import RedisServer
from tests.support.rpc import details
from tests.support.services import start_service
from tests.support.squashfs_tree import read_squashfs, sha256

SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "configs"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture()
def fresh_redis(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def seed(name: str, tmp: Path, broker: str, registry_url: str) -> dict:
    """A seed configuration with its paths moved under `tmp`."""
    config = json.loads((SEEDS / f"{name}.json").read_text())
    config["CacheDirectory"] = str(tmp / "cache")
    config["ExpandDirectory"] = str(tmp / "expand")
    config["Broker"] = broker
    del config["MongoDBURI"]
    config["DataDirectory"] = str(tmp / "data")
    config["Locations"]["testreg"] = {"remotetype": "dockerv2", "url": registry_url}
    cluster = config["Platforms"]["mycluster"]
    cluster["mungeSocketPath"] = str(tmp / "no-munge.socket")
    cluster["allowAnonymousPull"] = True  # these tests pull without credentials
    if "local" in cluster:
        cluster["local"]["imageDir"] = str(tmp / "images")
    return config


def remote_paths(config: dict, sshd) -> dict:
    cluster = config["Platforms"]["mycluster"]
    cluster["host"] = [f"127.0.0.1:{sshd.port}"]
    cluster["ssh"].update({"username": sshd.user, "key": str(sshd.ed25519_key),
                           "imageDir": str(sshd.image_dir), "knownHosts": str(sshd.known_hosts)})
    return config


def pull(address: str, reference: str, system: str = "mycluster", **kwargs):
    with grpc.insecure_channel(address) as channel:
        stub = pb_stub(channel)
        return list(stub.PullImage(pb.PullImageRequest(system=system, reference=reference,
                                                       **kwargs), timeout=180))


def pb_stub(channel):
    from imagegw.v1 import gateway_service_pb2_grpc

    return gateway_service_pb2_grpc.GatewayServiceStub(channel)


def image_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def start_pair(config: dict, tmp: Path, *, workers: int = 1, worker_configs=None):
    gateway = start_service("gateway", config, tmp / "gw", name="gateway")
    started = []
    for index in range(workers):
        worker_config = worker_configs[index] if worker_configs else config
        started.append(start_service("worker", worker_config, tmp / f"w{index}",
                                     name=f"worker{index}"))
    return gateway, started


def stop_all(*services):
    for service in services:
        service.stop()


def test_local_mode_with_local_worker(tmp_path, registry, redis_url):
    pushed = push_image(registry.url, "modes/local", "1", [L.layer(L.file("m", b"local"))])
    config = seed("local_mode_local_worker", tmp_path, redis_url, registry.url)
    gateway, (worker,) = start_pair(config, tmp_path)
    try:
        final = pull(gateway.address, "testreg/modes/local:1")[-1].image
        assert final.state == image_pb2.IMAGE_STATE_READY, final.failure.message
        assert final.id == pushed.config_digest[7:]
        assert image_files(tmp_path / "images") == [f"{final.id}.meta", f"{final.id}.squashfs"]
        assert f"job {final.id}" not in worker.log()  # job ids are not image ids
        assert re.search(r"job \w+ started", worker.log())
    finally:
        stop_all(gateway, worker)


def test_remote_mode_publishes_over_ssh(tmp_path, registry, redis_url, sshd_target):
    push_image(registry.url, "modes/remote", "1", [L.layer(L.file("r", b"remote bytes"))])
    config = remote_paths(seed("remote_mode_local_worker", tmp_path, redis_url, registry.url),
                          sshd_target)
    gateway, (worker,) = start_pair(config, tmp_path)
    try:
        responses = pull(gateway.address, "testreg/modes/remote:1")
        final = responses[-1].image
        assert final.state == image_pb2.IMAGE_STATE_READY, final.failure.message
        assert any(r.progress.stage == image_pb2.STAGE_PUBLISHING and "MB/s" in r.progress.message
                   for r in responses), "the stream reports the copy's throughput"
        remote = Path(sshd_target.image_dir)
        assert f"{final.id}.squashfs" in image_files(remote)
        assert (remote / f"{final.id}.meta").read_text().startswith("FORMAT: squashfs")
        assert read_squashfs(remote / f"{final.id}.squashfs")["r"].sha256 == sha256(b"remote bytes")
        assert not [n for n in image_files(remote) if n.startswith(".")], "no temporaries left"
        assert (remote / f"{final.id}.squashfs").stat().st_uid == \
            (remote).stat().st_uid, "written as the dedicated account"
    finally:
        stop_all(gateway, worker)


def test_one_gateway_serves_two_clusters_each_with_its_own_worker(tmp_path, registry, redis_url):
    push_image(registry.url, "modes/multi", "1", [L.layer(L.file("x", b"x"))])
    config = seed("local_gateway_remote_worker", tmp_path, redis_url, registry.url)
    base = config["Platforms"]["mycluster"]
    config["Platforms"] = {}
    worker_configs = []
    for name in ("alpha", "beta"):
        platform = copy.deepcopy(base)
        platform.update({"accesstype": "local", "local": {"imageDir": str(tmp_path / name)}})
        platform.pop("host"), platform.pop("ssh")
        config["Platforms"][name] = platform
        own = copy.deepcopy(config)
        own["Platforms"] = {name: platform}
        own["CacheDirectory"] = str(tmp_path / f"{name}-cache")
        own["ExpandDirectory"] = str(tmp_path / f"{name}-expand")
        worker_configs.append(own)
    gateway, workers = start_pair(config, tmp_path, workers=2, worker_configs=worker_configs)
    try:
        final = pull(gateway.address, "testreg/modes/multi:1", system="beta")[-1].image
        assert final.state == image_pb2.IMAGE_STATE_READY, final.failure.message
        assert image_files(tmp_path / "beta") == [f"{final.id}.meta", f"{final.id}.squashfs"]
        assert image_files(tmp_path / "alpha") == []
        assert "started" in workers[1].log() and " started (" not in workers[0].log()
    finally:
        stop_all(gateway, *workers)


def test_worker_killed_mid_job_the_job_completes_on_another(tmp_path, registry, fresh_redis):
    proxy = RegistryProxy(registry.url)
    push_image(registry.url, "modes/kill", "1",
               [L.layer(L.file("big", os.urandom(3 * 1024 * 1024)), compression="none")])
    config = seed("local_mode_local_worker", tmp_path, fresh_redis.url, proxy.url)
    gateway, workers = start_pair(config, tmp_path, workers=2)
    try:
        proxy.faults.append(Trickle(chunk_size=32 * 1024, delay=0.05))  # ~5 s download
        first = pull(gateway.address, "testreg/modes/kill:1", no_wait=True)[0].image
        assert first.state != image_pb2.IMAGE_STATE_READY
        deadline = time.monotonic() + 30
        busy = None
        while busy is None and time.monotonic() < deadline:
            busy = next((w for w in workers if " started (" in w.log()), None)
            time.sleep(0.05)
        assert busy is not None, "a worker took the job"
        while proxy.blob_gets() == 0:
            time.sleep(0.05)
        busy.kill()
        final = pull(gateway.address, "testreg/modes/kill:1")[-1].image
        assert final.state == image_pb2.IMAGE_STATE_READY, final.failure.message
        other = next(w for w in workers if w is not busy)
        assert " started (" in other.log() or " attached (" in other.log()
        assert image_files(tmp_path / "images") == [f"{final.id}.meta", f"{final.id}.squashfs"]
        tree = read_squashfs(tmp_path / "images" / f"{final.id}.squashfs")
        assert tree["big"].size == 3 * 1024 * 1024
    finally:
        stop_all(gateway, *workers)
        proxy.stop()


def test_two_gateways_on_one_redis_a_pull_is_watched_through_the_other(
        tmp_path, registry, fresh_redis):
    proxy = RegistryProxy(registry.url)
    push_image(registry.url, "modes/twogw", "1",
               [L.layer(L.file("big", os.urandom(1024 * 1024)), compression="none")])
    config = seed("local_mode_local_worker", tmp_path, fresh_redis.url, proxy.url)
    first, (worker,) = start_pair(config, tmp_path)
    second = start_service("gateway", config, tmp_path / "gw2", name="gateway2")
    try:
        proxy.faults.append(Trickle(chunk_size=32 * 1024, delay=0.03))
        started = pull(first.address, "testreg/modes/twogw:1", no_wait=True)[0].image
        assert started.state != image_pb2.IMAGE_STATE_READY
        watched = pull(second.address, "testreg/modes/twogw:1")
        assert watched[-1].image.state == image_pb2.IMAGE_STATE_READY
        assert any(r.image.state != image_pb2.IMAGE_STATE_READY for r in watched), \
            "the second gateway saw the pull in flight"
        assert proxy.count("GET", r"/manifests/") == 1, "one job for both gateways"
    finally:
        stop_all(first, second, worker)
        proxy.stop()


def test_worker_drains_on_sigterm_and_unregisters(tmp_path, registry, fresh_redis):
    push_image(registry.url, "modes/drain", "1", [L.layer(L.file("d", b"d"))])
    config = seed("local_mode_local_worker", tmp_path, fresh_redis.url, registry.url)
    gateway, (worker,) = start_pair(config, tmp_path)
    try:
        assert len(fresh_redis.client().smembers("imagegw:workers")) == 1
        worker.stop(signal.SIGTERM)
        assert worker.process.returncode == 0
        assert fresh_redis.client().smembers("imagegw:workers") == set()
        response = pull(gateway.address, "testreg/modes/drain:1", no_wait=True)[0].image
        assert response.state == image_pb2.IMAGE_STATE_QUEUED, "waits for a worker"
        late = start_service("worker", config, tmp_path / "late", name="late")
        try:
            final = pull(gateway.address, "testreg/modes/drain:1")[-1].image
            assert final.state == image_pb2.IMAGE_STATE_READY
        finally:
            late.stop()
    finally:
        stop_all(gateway, worker)


@pytest.mark.parametrize("name", ["local_mode_local_worker", "remote_mode_local_worker",
                                  "local_gateway_remote_worker"])
def test_seed_configs_start_unchanged_and_report_mongodb_unreachable(tmp_path, name):
    config = json.loads((SEEDS / f"{name}.json").read_text())
    config["CacheDirectory"] = str(tmp_path / "cache")
    config["ExpandDirectory"] = str(tmp_path / "expand")
    config["MongoDBURI"] = "mongodb://127.0.0.1:1/"  # nothing listens there
    gateway = start_service("gateway", config, tmp_path, expect_healthy=False)
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(gateway.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(), timeout=10)  # (the health stub is untyped)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                pb_stub(channel).LookupImage(pb.LookupImageRequest(
                    system="mycluster", reference="ubuntu:24.04"), timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "MongoDB" in details(info.value)
        assert gateway.process.poll() is None, "the gateway keeps running and retrying"
    finally:
        gateway.stop()


def test_redis_restart_loses_no_pull(tmp_path, registry, fresh_redis):
    proxy = RegistryProxy(registry.url)
    push_image(registry.url, "modes/redis", "1",
               [L.layer(L.file("big", os.urandom(2 * 1024 * 1024)), compression="none")])
    push_image(registry.url, "modes/redis", "2", [L.layer(L.file("small", b"s"))])
    config = seed("local_mode_local_worker", tmp_path, fresh_redis.url, proxy.url)
    gateway, (worker,) = start_pair(config, tmp_path)
    try:
        proxy.faults.append(Trickle(chunk_size=32 * 1024, delay=0.03))
        pull(gateway.address, "testreg/modes/redis:1", no_wait=True)
        while proxy.blob_gets() == 0:
            time.sleep(0.05)
        fresh_redis.restart()  # mid-pull: stream, consumer group and leases are gone
        first = pull(gateway.address, "testreg/modes/redis:1")[-1].image
        assert first.state == image_pb2.IMAGE_STATE_READY, first.failure.message

        fresh_redis.stop()  # a pull arrives while Redis is down: recorded, queued later
        accepted = pull(gateway.address, "testreg/modes/redis:2", no_wait=True)[-1].image
        assert accepted.state == image_pb2.IMAGE_STATE_QUEUED
        fresh_redis.start()
        deadline = time.monotonic() + 60
        state = None
        with grpc.insecure_channel(gateway.address) as channel:
            while time.monotonic() < deadline and state != image_pb2.IMAGE_STATE_READY:
                try:
                    state = pb_stub(channel).LookupImage(pb.LookupImageRequest(
                        system="mycluster", reference="testreg/modes/redis:2"), timeout=5).image.state
                except grpc.RpcError:
                    state = None
                time.sleep(0.5)
        assert state == image_pb2.IMAGE_STATE_READY, "the pull accepted before the outage completed"
    finally:
        stop_all(gateway, worker)
        proxy.stop()
