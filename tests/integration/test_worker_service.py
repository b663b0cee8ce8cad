"""The worker's gRPC service, as its own process: progress stream, result, attach, failure."""

from __future__ import annotations

import os
import threading

import grpc
import pytest

from imagegw.v1 import image_pb2, worker_service_pb2, worker_service_pb2_grpc
from tests.support import layers as L
from tests.support.images import push_image
from tests.support.proxy import RegistryProxy, Trickle
from tests.support.rpc import details
from tests.support.services import start_service

BIG = os.urandom(3 * 1024 * 1024)
TOKEN = "a-site-secret-shared-by-gateways-and-workers-" + os.urandom(8).hex()


@pytest.fixture(scope="module")
def proxy(registry):
    proxy = RegistryProxy(registry.url)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def worker(tmp_path_factory, proxy):
    workdir = tmp_path_factory.mktemp("worker")
    token_file = workdir / "worker.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    config = {
        "CacheDirectory": str(workdir / "cache"), "ExpandDirectory": str(workdir / "expand"),
        "WorkerTokenFile": str(token_file),
        "Locations": {"testreg": {"url": proxy.url}},
        "Platforms": {"cluster": {"accesstype": "local",
                                  "local": {"imageDir": str(workdir / "images")}}},
    }
    service = start_service("worker", config, workdir)
    yield service, workdir
    service.stop()


def build(service, job_id: str, reference: str, token: str | None = TOKEN, **request):
    metadata = () if token is None else (("imagegw-worker-token", token),)
    with grpc.insecure_channel(service.address) as channel:
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        message = worker_service_pb2.BuildImageRequest(job_id=job_id, system="cluster",
                                                       reference=reference, **request)
        return list(stub.BuildImage(message, timeout=120, metadata=metadata))


def test_build_streams_progress_then_the_result(worker, registry):
    service, workdir = worker
    pushed = push_image(registry.url, "svc/app", "1",
                        [L.layer(L.file("a", b"first")), L.layer(L.file("b", b"second"))])
    messages = build(service, "job-stream", "testreg/svc/app:1")
    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds[-1] == "result" and set(kinds[:-1]) == {"progress"}
    stages = [m.progress.stage for m in messages[:-1]]
    assert stages[0] == image_pb2.STAGE_QUEUED or stages[0] == image_pb2.STAGE_RESOLVING
    seen = list(dict.fromkeys(stages))
    assert [s for s in seen if s != image_pb2.STAGE_QUEUED] == [
        image_pb2.STAGE_RESOLVING, image_pb2.STAGE_DOWNLOADING, image_pb2.STAGE_CONVERTING,
        image_pb2.STAGE_PUBLISHING]
    result = messages[-1].result
    image_id = pushed.config_digest.removeprefix("sha256:")
    assert result.image_id == image_id
    assert result.image_file == f"{image_id}.squashfs" and result.meta_file == f"{image_id}.meta"
    assert result.size_bytes == (workdir / "images" / result.image_file).stat().st_size
    assert result.manifest_digest == pushed.manifest_digest
    assert result.reference.endswith("svc/app:1")


def test_second_call_with_the_same_job_id_attaches(worker, registry, proxy):
    service, _ = worker
    push_image(registry.url, "svc/slow", "1", [L.layer(L.file("big", BIG), compression="none")])
    proxy.faults.append(Trickle(chunk_size=64 * 1024, delay=0.05))  # ~2.5 s download
    proxy.clear()
    results: dict[str, list] = {}
    first = threading.Thread(target=lambda: results.__setitem__(
        "first", build(service, "job-attach", "testreg/svc/slow:1")))
    first.start()
    while proxy.blob_gets() == 0:
        threading.Event().wait(0.05)
    second = build(service, "job-attach", "testreg/svc/slow:1")
    first.join(60)
    assert second[-1].WhichOneof("event") == "result"
    assert results["first"][-1].result == second[-1].result
    assert proxy.count("GET", r"/manifests/") == 1, "one job ran, the second call attached"


def test_failure_carries_a_status_code_and_a_cause(worker):
    service, workdir = worker
    messages = build(service, "job-missing", "testreg/svc/missing:1")
    assert messages[-1].WhichOneof("event") == "failure"
    failure = messages[-1].failure
    assert failure.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "svc/missing" in failure.message
    assert not list((workdir / "expand").iterdir())


def test_bad_requests_are_refused_with_invalid_argument(worker):
    service, _ = worker
    with pytest.raises(grpc.RpcError) as info:
        build(service, "", "testreg/svc/app:1")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    messages = build(service, "job-bad-ref", "testreg/UPPER:1")
    assert messages[-1].failure.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "UPPER" in messages[-1].failure.message


@pytest.mark.parametrize("token", [None, "a-guess-of-the-right-length-" + "x" * 36, TOKEN + "x"])
def test_a_call_without_the_worker_secret_is_unauthenticated_and_writes_nothing(
        worker, registry, token):
    """The attack of issue 18: a direct BuildImage with made-up ACLs and no gateway record."""
    service, workdir = worker
    push_image(registry.url, "svc/intruder", "1", [L.layer(L.file("i", b"not for you"))])
    before = sorted(p.name for p in (workdir / "images").glob("*"))
    with pytest.raises(grpc.RpcError) as info:
        build(service, "job-intruder", "testreg/svc/intruder:1", token=token,
              user_acl=[1234], group_acl=[99])
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "WorkerTokenFile" in details(info.value)
    assert TOKEN not in details(info.value)
    assert sorted(p.name for p in (workdir / "images").glob("*")) == before
    assert TOKEN not in service.log()
