"""Shifter's REST API counts against the same per-caller limits as gRPC: a user whose
calls are all in flight (registry logins that a silent registry never answers) gets
429 naming the setting, while another user's lookups and the gRPC health check answer."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.trust_site import SYSTEM, trust_config
from tests.support.munge import make_credential
from tests.support.proxy import SilentServer
from tests.support.registry import RegistryServer, free_port
from tests.support.services import ServiceProcess, start_service

MAX_CALLS = 2


@pytest.fixture
def site(tmp_path: Path, munge_socket: str, registry: RegistryServer):
    silent = SilentServer()
    rest = f"127.0.0.1:{free_port()}"
    config = trust_config(tmp_path, munge_socket, registry_url=registry.url, RestListen=rest,
                          Limits={"maxCallsPerCaller": MAX_CALLS, "httpTimeout": 60,
                                  "httpRetries": 0})
    config["Locations"]["silent"] = {"remotetype": "dockerv2", "url": silent.url}
    service = start_service("serve", config, tmp_path)
    try:
        yield service, f"http://{rest}", munge_socket, silent
    finally:
        service.stop()
        silent.stop()


def curl(base: str, method: str, path: str, credential: str) -> tuple[int, dict]:
    command = ["curl", "-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}",
               "-X", method, "-H", f"authentication:{credential}"]
    if method == "POST":
        command += ["-H", "Content-type: application/json", "--data-binary", ""]
    done = subprocess.run([*command, base + path], capture_output=True, text=True,
                          timeout=90, check=True)
    body, _, code = done.stdout.rpartition("\n")
    return int(code), json.loads(body)


def test_rest_calls_in_flight_are_capped_per_caller(
        site: tuple[ServiceProcess, str, str, SilentServer]) -> None:
    service, base, socket, silent = site
    login = json.dumps({"authorized_locations": {"silent": "alice:secret"}}).encode()
    held: list[tuple[int, dict]] = []

    def hold() -> None:  # the registry login check waits for the silent registry
        give_up = time.monotonic() + 45
        while True:
            answer = curl(base, "POST", f"/api/pull/{SYSTEM}/docker/silent%2Fapp%3A1/",
                          make_credential(socket, as_user="daemon", payload=login))
            # A probing lookup below may hold a slot for a moment: then ask again.
            if answer[0] != 429 or time.monotonic() > give_up:
                held.append(answer)
                return
            time.sleep(0.05)

    threads = [threading.Thread(target=hold) for _ in range(MAX_CALLS)]
    for thread in threads:
        thread.start()
    lookup = f"/api/lookup/{SYSTEM}/docker/nothing%2Fhere%3A1/"
    deadline = time.monotonic() + 45
    while True:  # until both held calls are charged (they wait up to httpTimeout)
        code, answer = curl(base, "GET", lookup, make_credential(socket, as_user="daemon"))
        if code == 429 or time.monotonic() > deadline or held:
            break
        time.sleep(0.2)
    assert code == 429, (answer, held)
    assert "maxCallsPerCaller" in answer["message"] and "uid" in answer["message"]
    # Another user, and the health check, are answered meanwhile.
    other, answer = curl(base, "GET", lookup, make_credential(socket, as_user="nobody"))
    assert other == 404, answer
    with service.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        health = stub.Check(  # type: ignore[attr-defined]  # untyped health stub
            health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    silent.stop()  # the registry goes away: the held logins fail at once
    for thread in threads:
        thread.join(90)
    assert len(held) == MAX_CALLS and all(code != 200 for code, _ in held), held
