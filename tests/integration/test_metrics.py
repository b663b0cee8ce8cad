"""Issue 8: the gateway and the worker each serve Prometheus metrics, and a pull moves them.

The gateway and the worker run as separate processes (`imagegw gateway` + `imagegw worker`)
with `MetricsListen` / `WorkerMetricsListen` on port 0; the bound endpoint is read from the log."""

from __future__ import annotations

import re
import time
from pathlib import Path

import grpc
import pytest
import urllib3
from prometheus_client.parser import text_string_to_metric_families

from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import gateway_service_pb2_grpc, image_pb2
from tests.support import layers as L
from tests.support.images import default_config, push_image
from tests.support.services import ServiceProcess, embedded_config, start_service

SYSTEM = "default"
STAGES = ("resolving", "downloading", "converting", "publishing")


@pytest.fixture(scope="module")
def services(tmp_path_factory, registry):
    workdir = tmp_path_factory.mktemp("metrics")
    worker_config = embedded_config(workdir, registry_url=registry.url,
                                    WorkerMetricsListen="127.0.0.1:0")
    worker = start_service("worker", worker_config, workdir)
    gateway_config = embedded_config(workdir, registry_url=registry.url,
                                     WorkerAddresses=[worker.address],
                                     MetricsListen="127.0.0.1:0")
    gateway_config["Platforms"][SYSTEM]["allowAnonymousPull"] = True
    gateway = start_service("gateway", gateway_config, workdir)
    yield gateway, worker, workdir
    gateway.stop()
    worker.stop()


def metrics_url(service: ServiceProcess, key: str) -> str:
    pattern = re.compile(rf"(?<![A-Za-z]){key}: Prometheus metrics at (http://\S+)")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        match = pattern.search(service.log())
        if match:
            return match.group(1)
        time.sleep(0.05)
    raise AssertionError(f"no {key} endpoint in the log:\n{service.log()[-2000:]}")


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    response = urllib3.request("GET", url, timeout=10, retries=False)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.data.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def pull(service: ServiceProcess, reference: str) -> pb.PullImageResponse:
    with service.channel() as channel:
        stub = pb_stub(channel)
        responses = list(stub.PullImage(pb.PullImageRequest(system=SYSTEM, reference=reference),
                                        timeout=120))
    final = responses[-1]
    assert final.image.state == image_pb2.IMAGE_STATE_READY, final.image.failure.message
    return final


def pb_stub(channel: grpc.Channel) -> gateway_service_pb2_grpc.GatewayServiceStub:
    return gateway_service_pb2_grpc.GatewayServiceStub(channel)


def test_a_pull_moves_gateway_and_worker_counters(services, registry):
    gateway, worker, workdir = services
    gateway_url = metrics_url(gateway, "MetricsListen")
    worker_url = metrics_url(worker, "WorkerMetricsListen")
    assert gateway_url != worker_url
    layers = [L.layer(L.file("bin/tool", b"t" * 5000, 0o755)), L.layer(L.file("etc/conf", b"c"))]
    pushed = push_image(registry.url, "metrics/app", "1", layers, default_config(layers))
    gateway_before, worker_before = scrape(gateway_url), scrape(worker_url)

    final = pull(gateway, "testreg/metrics/app:1")
    with gateway.channel() as channel, pytest.raises(grpc.RpcError) as missing:
        pb_stub(channel).LookupImage(pb.LookupImageRequest(system=SYSTEM,
                                                           reference="testreg/metrics/none:1"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    gw, wk = scrape(gateway_url), scrape(worker_url)
    requests = "imagegw_grpc_requests_total"
    service = "imagegw.v1.GatewayService"
    for name, code in (("PullImage", "OK"), ("LookupImage", "NOT_FOUND")):
        labels = {"service": service, "method": name, "code": code}
        assert value(gw, requests, **labels) == value(gateway_before, requests, **labels) + 1
    worker_calls = {"service": "imagegw.v1.WorkerService", "method": "BuildImage", "code": "OK"}
    assert value(wk, requests, **worker_calls) >= value(worker_before, requests, **worker_calls) + 1
    assert value(gw, "imagegw_queue_jobs", state="waiting") == 0
    assert value(gw, "imagegw_gateway_jobs_in_flight") == 0

    built = value(wk, "imagegw_pulls_total", outcome="built")
    assert built == value(worker_before, "imagegw_pulls_total", outcome="built") + 1
    assert value(wk, "imagegw_worker_jobs_in_flight") == 0
    misses = value(wk, "imagegw_layer_cache_requests_total", result="miss")
    assert misses == value(worker_before, "imagegw_layer_cache_requests_total", result="miss") + 2
    downloaded = (value(wk, "imagegw_downloaded_bytes_total")
                  - value(worker_before, "imagegw_downloaded_bytes_total"))
    assert downloaded == sum(len(layer) for layer in layers)
    image_file = Path(workdir / "images" / SYSTEM / final.image.image_file)
    published = (value(wk, "imagegw_published_bytes_total", system=SYSTEM)
                 - value(worker_before, "imagegw_published_bytes_total", system=SYSTEM))
    assert published == image_file.stat().st_size == final.image.size_bytes
    for stage in STAGES:
        name = "imagegw_pull_stage_duration_seconds_count"
        assert value(wk, name, stage=stage) == value(worker_before, name, stage=stage) + 1, stage
    assert final.image.id == pushed.config_digest.removeprefix("sha256:")


def test_a_second_image_sharing_a_layer_counts_a_cache_hit(services, registry):
    gateway, worker, _workdir = services
    worker_url = metrics_url(worker, "WorkerMetricsListen")
    base = L.layer(L.file("usr/lib/base.so", b"b" * 3000))
    first = [base, L.layer(L.file("app/one", b"1"))]
    second = [base, L.layer(L.file("app/two", b"2"))]
    push_image(registry.url, "metrics/shared", "one", first, default_config(first))
    push_image(registry.url, "metrics/shared", "two", second, default_config(second))
    pull(gateway, "testreg/metrics/shared:one")
    before = scrape(worker_url)

    pull(gateway, "testreg/metrics/shared:two")

    after = scrape(worker_url)
    cache = "imagegw_layer_cache_requests_total"
    assert value(after, cache, result="hit") == value(before, cache, result="hit") + 1
    assert value(after, cache, result="miss") == value(before, cache, result="miss") + 1
    downloaded = (value(after, "imagegw_downloaded_bytes_total")
                  - value(before, "imagegw_downloaded_bytes_total"))
    assert downloaded == len(second[1])


def test_lookups_answered_from_the_cache_are_counted_like_any_other(services, registry):
    """Repeated lookups of a READY image are answered from the gateway's lookup cache on
    its event loop (issue 21); each still counts, with its status code."""
    gateway, _worker, _workdir = services
    gateway_url = metrics_url(gateway, "MetricsListen")
    layers = [L.layer(L.file("etc/looked-up", b"l"))]
    push_image(registry.url, "metrics/looked", "1", layers, default_config(layers))
    final = pull(gateway, "testreg/metrics/looked:1")
    labels = {"service": "imagegw.v1.GatewayService", "method": "LookupImage", "code": "OK"}
    before = value(scrape(gateway_url), "imagegw_grpc_requests_total", **labels)
    with gateway.channel() as channel:
        stub = pb_stub(channel)
        answers = [stub.LookupImage(pb.LookupImageRequest(
            system=SYSTEM, reference="testreg/metrics/looked:1"), timeout=30) for _ in range(5)]
    assert [a.image.state for a in answers] == [image_pb2.IMAGE_STATE_READY] * 5
    assert {a.image.id for a in answers} == {final.image.id}
    assert value(scrape(gateway_url), "imagegw_grpc_requests_total", **labels) == before + 5
