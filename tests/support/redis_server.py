"""A real redis-server on 127.0.0.1 for tests: start, stop, restart on the same port.

No persistence unless asked (`appendonly=True`: an append-only file that a restart on
the same port reads back), optionally a replica of another server; its files in a
temporary directory. Fixtures `redis_server`, `redis_url` (registered for every test by
tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process, owned by the test run."""

    def __init__(self, workdir: Path, port: int | None = None, *, appendonly: bool = False,
                 replica_of: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.replica_of = replica_of
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "redis.pid"

    @property
    def logfile(self) -> Path:
        return self.workdir / "redis.log"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--daemonize", "no",
             "--save", "", "--appendonly", "yes" if self.appendonly else "no",
             "--appendfsync", "always", "--dir", str(self.workdir),
             "--pidfile", str(self.pidfile), "--logfile", str(self.logfile),
             *(["--replicaof", "127.0.0.1", str(self.replica_of)] if self.replica_of else [])],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0,
                             socket_connect_timeout=1.0)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return
                time.sleep(0.05)
        finally:
            client.close()
        log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
        self.stop()
        raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}:\n{log}")

    def stop(self) -> None:
        """Stops the server by its pid and waits for it to exit."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed that was not already."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> None:
        """Stops and starts again on the same port (all data is lost: no persistence)."""
        self.stop()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5.0,
                           socket_connect_timeout=2.0)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
