"""Redis with Sentinel for failover tests: a primary, a replica and three sentinels,
each its own process on 127.0.0.1 (`redis-sentinel` with a config file it may rewrite).

`SentinelGroup(workdir).start()`; `.broker` is the `Broker` URL naming the sentinels;
`.kill_primary()` SIGKILLs the primary; `.wait_for_failover()` waits for the replica's
promotion; `.stop()` stops every process by its pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from tests.support.redis_server import RedisServer, free_port

MASTER = "imagegw"
START_TIMEOUT = 15.0


class SentinelGroup:
    def __init__(self, workdir: Path, *, down_after_ms: int = 1000) -> None:
        self.workdir = workdir
        self.primary = RedisServer(workdir / "primary", appendonly=True)
        self.replica = RedisServer(workdir / "replica", appendonly=True,
                                   replica_of=self.primary.port)
        self.down_after_ms = down_after_ms
        self.ports = [free_port() for _ in range(3)]
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def broker(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        return f"redis+sentinel://{hosts}/{MASTER}"

    def start(self) -> SentinelGroup:
        binary = shutil.which("redis-sentinel")
        if binary is None:
            raise RuntimeError("redis-sentinel is not installed (apt-get install redis-sentinel)")
        self.primary.start()
        self.replica.start()
        for index, port in enumerate(self.ports):
            directory = self.workdir / f"sentinel{index}"
            directory.mkdir(parents=True, exist_ok=True)
            conf = directory / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {directory}\n"
                f"logfile {directory / 'sentinel.log'}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER} 5000\n")
            self.processes.append(subprocess.Popen(
                [binary, str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        self._wait(lambda: self.master_port() == self.primary.port, "sentinels to see the primary")
        self._wait(self._replica_in_sync, "the replica to sync")
        return self

    def master_port(self) -> int | None:
        for port in self.ports:
            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0,
                                 socket_connect_timeout=1.0)
            with contextlib.suppress(redis.RedisError):
                address = client.sentinel_get_master_addr_by_name(MASTER)
                # A plain client gets the (host, port) pair; `bool` is what the
                # annotation adds for redis.Sentinel's fan-out to every sentinel.
                if isinstance(address, tuple):
                    return int(address[1])
            client.close()
        return None

    def _replica_in_sync(self) -> bool:
        with contextlib.suppress(redis.RedisError):
            info = self.replica.client().info("replication")
            return info.get("master_link_status") == "up"
        return False

    def _wait(self, condition, what: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        logs = "".join((p / "sentinel.log").read_text(errors="replace")[-1500:]
                       for p in sorted(self.workdir.glob("sentinel*"))
                       if (p / "sentinel.log").exists())
        raise RuntimeError(f"timed out waiting for {what}:\n{logs}")

    def kill_primary(self) -> None:
        self.primary.kill()

    def wait_for_failover(self, timeout: float = 30.0) -> None:
        self._wait(lambda: self.master_port() == self.replica.port, "the replica's promotion",
                   timeout)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
        self.processes.clear()
        self.replica.stop()
        self.primary.stop()
