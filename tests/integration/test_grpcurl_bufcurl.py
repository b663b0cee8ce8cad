"""Issue 8: admins debug the gateway with grpcurl and `buf curl` through server reflection.

One real gateway (`imagegw serve`) and a real registry with a pushed image; each tool lists
the services, calls LookupImage, ListImages, ListJobs, the streaming PullImage and the
health check, exactly as docs/debugging.md shows them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import layers as L
from tests.support.images import default_config, push_image
from tests.support.services import ROOT, embedded_config, start_service

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
BUF = str(ROOT / ".tools" / "node_modules" / ".bin" / "buf")
SERVICE = "imagegw.v1.GatewayService"
SYSTEM = "default"
TIMEOUT = 120


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, registry):
    workdir = tmp_path_factory.mktemp("curl")
    config = embedded_config(workdir, registry_url=registry.url)
    config["Platforms"][SYSTEM]["allowAnonymousPull"] = True  # the tools send no MUNGE credential
    service = start_service("serve", config, workdir)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def image(registry):
    layers = [L.layer(L.file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755))]
    config = default_config(layers)
    config["config"] = {"Env": ["PATH=/bin"], "Cmd": ["/bin/hello"]}
    pushed = push_image(registry.url, "curl/hello", "1", layers, config)
    return pushed.config_digest.removeprefix("sha256:")


def grpcurl(address: str, *args: str, data: dict | None = None) -> subprocess.CompletedProcess:
    command = [GRPCURL, "-plaintext", "-max-time", str(TIMEOUT)]
    if data is not None:
        command += ["-d", json.dumps(data)]
    return subprocess.run([*command, address, *args], capture_output=True, text=True,
                          timeout=TIMEOUT + 10)


def buf_curl(address: str, path: str, *, data: dict | None = None, list_methods: bool = False
             ) -> subprocess.CompletedProcess:
    if not Path(BUF).exists():
        pytest.fail(f"{BUF} is missing: run scripts/setup")
    command = [BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge",
               "--timeout", f"{TIMEOUT}s"]
    if list_methods:
        command.append("--list-methods")
    if data is not None:
        command += ["-d", json.dumps(data)]
    return subprocess.run([*command, f"http://{address}{path}"], capture_output=True, text=True,
                          timeout=TIMEOUT + 10)


def messages(result: subprocess.CompletedProcess) -> list[dict]:
    """Every JSON message a tool printed (a server stream prints one after another)."""
    assert result.returncode == 0, result.stderr
    decoder = json.JSONDecoder()
    text, at = result.stdout, 0
    found: list[dict] = []
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return found
        message, at = decoder.raw_decode(text, at)
        found.append(message)


def one(result: subprocess.CompletedProcess) -> dict:
    found = messages(result)
    assert len(found) == 1, found
    return found[0]


def test_grpcurl_lists_services_through_reflection(gateway):
    result = grpcurl(gateway.address, "list")
    assert result.returncode == 0, result.stderr
    assert {SERVICE, "grpc.health.v1.Health"} <= set(result.stdout.split())
    methods = grpcurl(gateway.address, "list", SERVICE)
    assert f"{SERVICE}.PullImage" in methods.stdout.split()
    assert f"{SERVICE}.LookupImage" in methods.stdout.split()


def test_grpcurl_pulls_with_progress_then_looks_up_lists_images_and_jobs(gateway, image):
    reference = "testreg/curl/hello:1"
    stream = messages(grpcurl(gateway.address, f"{SERVICE}/PullImage",
                              data={"system": SYSTEM, "reference": reference}))
    assert len(stream) >= 2
    assert stream[-1]["image"]["state"] == "IMAGE_STATE_READY"
    assert stream[-1]["image"]["id"] == image
    assert any("progress" in message for message in stream[:-1])

    lookup = one(grpcurl(gateway.address, f"{SERVICE}/LookupImage",
                         data={"system": SYSTEM, "reference": reference}))
    assert lookup["image"]["id"] == image
    assert lookup["image"]["metadata"]["cmd"] == ["/bin/hello"]

    listing = one(grpcurl(gateway.address, f"{SERVICE}/ListImages", data={"system": SYSTEM}))
    assert image in [entry["id"] for entry in listing["images"]]

    jobs = one(grpcurl(gateway.address, f"{SERVICE}/ListJobs", data={}))
    assert all(job["state"] != "JOB_STATE_RUNNING" for job in jobs.get("jobs", []))


def test_grpcurl_shows_the_status_code_and_message_of_a_failed_call(gateway):
    result = grpcurl(gateway.address, f"{SERVICE}/LookupImage",
                     data={"system": SYSTEM, "reference": "testreg/curl/absent:1"})
    assert result.returncode != 0
    assert "Code: NotFound" in result.stderr
    assert "is not on system default" in result.stderr


def test_grpcurl_health_check_says_serving(gateway):
    assert one(grpcurl(gateway.address, "grpc.health.v1.Health/Check"))["status"] == "SERVING"
    named = one(grpcurl(gateway.address, "grpc.health.v1.Health/Check", data={"service": SERVICE}))
    assert named["status"] == "SERVING"


def test_buf_curl_lists_every_public_method(gateway):
    result = buf_curl(gateway.address, "", list_methods=True)
    assert result.returncode == 0, result.stderr
    listed = set(result.stdout.split())
    for method in ("PullImage", "LookupImage", "ListImages", "ListJobs", "ExpireImage",
                   "ExpireUnusedImages", "ImportImage", "Login", "Logout"):
        assert f"{SERVICE}/{method}" in listed
    assert "grpc.health.v1.Health/Check" in listed


def test_buf_curl_pulls_with_progress_then_looks_up_lists_images_and_jobs(gateway, image):
    reference = "testreg/curl/hello:1"
    stream = messages(buf_curl(gateway.address, f"/{SERVICE}/PullImage",
                               data={"system": SYSTEM, "reference": reference, "force": True}))
    assert stream[-1]["image"]["state"] == "IMAGE_STATE_READY"
    assert stream[-1]["image"]["id"] == image

    lookup = one(buf_curl(gateway.address, f"/{SERVICE}/LookupImage",
                          data={"system": SYSTEM, "type": "id", "reference": image}))
    assert lookup["image"]["tags"] == [reference]

    listing = one(buf_curl(gateway.address, f"/{SERVICE}/ListImages",
                           data={"system": SYSTEM, "state": "IMAGE_STATE_READY"}))
    assert [entry["id"] for entry in listing["images"]].count(image) == 1

    jobs = one(buf_curl(gateway.address, f"/{SERVICE}/ListJobs", data={"system": SYSTEM}))
    assert isinstance(jobs.get("jobs", []), list)


def test_buf_curl_reports_a_failed_call_as_json_status(gateway):
    result = buf_curl(gateway.address, f"/{SERVICE}/LookupImage",
                      data={"system": "nosuchsystem", "reference": "x:1"})
    assert result.returncode != 0
    error = json.loads(result.stderr)
    assert error["code"] == "not_found"
    assert "nosuchsystem" in error["message"]


def test_buf_curl_health_check_says_serving(gateway):
    assert one(buf_curl(gateway.address, "/grpc.health.v1.Health/Check"))["status"] == "SERVING"
