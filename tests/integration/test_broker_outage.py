"""Issue 25: a broker outage is not a pull failure.

`imagegw gateway`, `imagegw worker`s and Redis as docs/deployment.md describes (append-only
file), the registry slowed down so the pull is mid-conversion: Redis SIGKILLed and back on
the same port and file 3 s later; then Redis Sentinel with a replica, its primary
SIGKILLed mid-pull. Every pull ends READY (as `shifterimg` and the records say), with one
conversion per image and its files complete."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from tests.support import layers as L
from tests.support.images import push_image
from tests.support.proxy import RegistryProxy, Trickle
from tests.support.redis_server import RedisServer
from tests.support.registry import RegistryServer
from tests.support.sentinel import SentinelGroup
from tests.support.services import SHIFTERIMG, embedded_config, start_service
from tests.support.squashfs_tree import read_squashfs

SYSTEM = "default"
RUN_TIMEOUT = 180.0
BIG = 2 * 1024 * 1024


def site_config(tmp: Path, broker: str, registry_url: str) -> dict:
    config = embedded_config(tmp, registry_url=registry_url, Broker=broker,
                             JobLeaseSeconds=6, WorkerTimeToLive=6)
    return config


def start_shifterimg(address: str, reference: str, log: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("IMAGEGW_", "MUNGE_", "UDIROOT_"))}
    env.update(IMAGEGW_GATEWAY=address, IMAGEGW_SYSTEM=SYSTEM,
               UDIROOT_CONF="/nonexistent/udiRoot.conf")
    return subprocess.Popen([SHIFTERIMG, "pull", reference], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=open(log, "w"))  # noqa: SIM115


def finish(process: subprocess.Popen[str], log: Path) -> tuple[int, str, str]:
    stdout, _ = process.communicate(timeout=RUN_TIMEOUT)
    return process.returncode, stdout, log.read_text()


def conversions(workers, image_id: str) -> int:
    """Jobs that ended with this image, counted in every worker's log."""
    pattern = re.compile(rf"job \w+: \S+ -> {image_id[:12]} in ")
    return sum(len(pattern.findall(worker.log())) for worker in workers)


def lookup_state(address: str, reference: str) -> str:
    from imagegw.client import GatewayClient

    with GatewayClient([address]) as client:
        return client.lookup(SYSTEM, reference).state


def test_redis_killed_and_restarted_mid_conversion_the_pull_ends_ready(
    tmp_path: Path, registry: RegistryServer,
) -> None:
    proxy = RegistryProxy(registry.url)
    push_image(registry.url, "outage/restart", "1",
               [L.layer(L.file("big", os.urandom(BIG)), compression="none")])
    redis_server = RedisServer(tmp_path / "redis", appendonly=True)
    redis_server.start()
    config = site_config(tmp_path, redis_server.url, proxy.url)
    gateway = start_service("gateway", config, tmp_path / "gw", name="gateway")
    workers = [start_service("worker", config, tmp_path / f"w{i}", name=f"worker{i}")
               for i in range(2)]
    try:
        proxy.faults.append(Trickle(chunk_size=32 * 1024, delay=0.08))  # ~5 s download
        client = start_shifterimg(gateway.address, "testreg/outage/restart:1",
                                  tmp_path / "shifterimg.err")
        deadline = time.monotonic() + 30
        while proxy.blob_gets() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.blob_gets(), "the pull reached its download"
        redis_server.kill()
        time.sleep(3)
        redis_server.start()  # the same port and append-only file

        status, stdout, stderr = finish(client, tmp_path / "shifterimg.err")
        assert status == 0, stderr + gateway.log()[-3000:]
        image_id = stdout.split()[-1]
        assert "lost the Redis progress subscription" not in stderr
        assert lookup_state(gateway.address, "testreg/outage/restart:1") == "READY"
        assert conversions(workers, image_id) == 1, "one conversion"
        images = tmp_path / "images" / SYSTEM
        assert read_squashfs(images / f"{image_id}.squashfs")["big"].size == BIG
        assert "FAILED" not in gateway.log() and "failed" not in stderr
    finally:
        for service in (gateway, *workers):
            service.stop()
        redis_server.stop()
        proxy.stop()


def test_sentinel_failover_mid_pull_loses_no_pull_and_runs_no_job_twice(
    tmp_path: Path, registry: RegistryServer,
) -> None:
    proxy = RegistryProxy(registry.url)
    references = []
    for index in range(3):
        push_image(registry.url, "outage/failover", str(index),
                   [L.layer(L.file("big", os.urandom(BIG // 2)), compression="none")])
        references.append(f"testreg/outage/failover:{index}")
    group = SentinelGroup(tmp_path / "sentinel").start()
    config = site_config(tmp_path, group.broker, proxy.url)
    gateway = start_service("gateway", config, tmp_path / "gw", name="gateway")
    workers = [start_service("worker", config, tmp_path / f"w{i}", name=f"worker{i}")
               for i in range(2)]
    try:
        proxy.faults.append(Trickle(chunk_size=32 * 1024, delay=0.05, times=3))
        clients = [start_shifterimg(gateway.address, reference, tmp_path / f"c{index}.err")
                   for index, reference in enumerate(references)]
        deadline = time.monotonic() + 30
        while proxy.blob_gets() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        group.kill_primary()
        group.wait_for_failover()

        ids = []
        for index, client in enumerate(clients):
            status, stdout, stderr = finish(client, tmp_path / f"c{index}.err")
            assert status == 0, stderr + gateway.log()[-3000:]
            ids.append(stdout.split()[-1])
        for reference, image_id in zip(references, ids, strict=True):
            assert lookup_state(gateway.address, reference) == "READY"
            assert conversions(workers, image_id) == 1, f"{reference} converted once"
            tree = read_squashfs(tmp_path / "images" / SYSTEM / f"{image_id}.squashfs")
            assert tree["big"].size == BIG // 2
        # Entries whose ack the failover cut off are claimed once more, found stale and
        # acked: none stays queued.
        deadline = time.monotonic() + 40
        while (left := group.replica.client().xlen("imagegw:jobs:default")) and \
                time.monotonic() < deadline:
            time.sleep(0.5)
        assert left == 0, "no job left queued"
    finally:
        for service in (gateway, *workers):
            service.stop()
        group.stop()
        proxy.stop()
