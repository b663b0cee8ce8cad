"""Start the real gateway and worker as their own processes on ephemeral loopback ports.

`start_service(command, config, workdir)` writes the config file, runs
`imagegw serve` (or `gateway`/`worker`), waits for its address file and health,
and raises with the log tail when it does not come up."""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagegw.v1 import gateway_service_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
IMAGEGW = str(Path(sys.executable).parent / "imagegw")
SHIFTERIMG = str(Path(sys.executable).parent / "shifterimg")


_RESERVED: list[socket.socket] = []


@atexit.register
def _release_reserved() -> None:
    for reserved in _RESERVED:
        reserved.close()


def refused_address() -> str:
    """127.0.0.1:PORT where connections are refused for the whole test session. The port
    stays bound (not listening), so nothing can take it, not even as a client's ephemeral
    source port (which can make a connection to a closed port connect to itself)."""
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))
    _RESERVED.append(reserved)
    return f"127.0.0.1:{reserved.getsockname()[1]}"


def embedded_config(workdir: Path, *, registry_url: str | None = None, systems=("default",),
                    **overrides) -> dict:
    """A Shifter-style config for tests: local systems under workdir, a `testreg` location."""
    config: dict = {
        "DefaultImageLocation": "registry-1.docker.io",
        "DefaultImageFormat": "squashfs",
        "PullUpdateTimeout": 300,
        "ImageExpirationTimeout": "90:00:00:00",
        "CacheDirectory": str(workdir / "cache"),
        "ExpandDirectory": str(workdir / "expand"),
        "DataDirectory": str(workdir / "data"),
        "Locations": {"registry-1.docker.io": {"remotetype": "dockerv2",
                                               "authentication": "http"}},
        "Platforms": {
            name: {"mungeSocketPath": "/nonexistent/munge.socket", "accesstype": "local",
                   # Tests that check authentication turn anonymous pulls off again.
                   "allowAnonymousPull": True,
                   "admins": ["root"], "local": {"imageDir": str(workdir / "images" / name)}}
            for name in systems
        },
    }
    if registry_url:
        config["Locations"]["testreg"] = {"remotetype": "dockerv2", "url": registry_url}
    config.update(overrides)
    return config


@dataclass
class ServiceProcess:
    process: subprocess.Popen
    address: str
    log_path: Path
    config_path: Path
    args: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def stub(self) -> gateway_service_pb2_grpc.GatewayServiceStub:
        return gateway_service_pb2_grpc.GatewayServiceStub(self.channel())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def start_service(command: str, config: dict, workdir: Path, *, listen: str = "127.0.0.1:0",
                  name: str | None = None, extra_env: dict | None = None,
                  timeout: float = 30.0, expect_healthy: bool = True,
                  executable: str = IMAGEGW) -> ServiceProcess:
    """`executable` is the `imagegw` to run (another installation's: its environment then
    carries no PYTHONPATH or virtualenv of ours)."""
    name = name or command
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"{name}.json"
    config_path.write_text(json.dumps(config, indent=2))
    address_file = workdir / f"{name}.address"
    address_file.unlink(missing_ok=True)
    log_path = workdir / f"{name}.log"
    args = [executable, "--log-level", "DEBUG", command, "--config", str(config_path),
            "--listen", listen, "--address-file", str(address_file)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGW_")}
    if executable != IMAGEGW:
        env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra_env or {})
    with open(log_path, "ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=workdir)
    service = ServiceProcess(process, "", log_path, config_path, args)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"`imagegw {command}` exited with {process.returncode}:\n"
                               f"{service.log()[-4000:]}")
        if address_file.exists():
            service.address = address_file.read_text().strip()
            break
        time.sleep(0.05)
    else:
        service.kill()
        raise RuntimeError(f"`imagegw {command}` did not start in {timeout}s:\n"
                           f"{service.log()[-4000:]}")
    if expect_healthy:
        wait_healthy(service.address, timeout=max(1.0, deadline - time.monotonic()))
    return service


def restart(service: ServiceProcess, *, timeout: float = 30.0) -> ServiceProcess:
    """Starts the same command again on the same address (after it was stopped)."""
    config = json.loads(service.config_path.read_text())
    command = service.args[3]
    return start_service(command, config, service.config_path.parent,
                         listen=service.address, name=service.config_path.stem,
                         timeout=timeout)


def wait_healthy(address: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(  # type: ignore[attr-defined]  # untyped health stub
                    health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                last = exc
            time.sleep(0.1)
    raise RuntimeError(f"service at {address} not healthy in {timeout}s: {last}")
