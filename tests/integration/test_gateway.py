"""Issue 3: the gateway and its local worker as real processes, pulling from a real registry."""

from __future__ import annotations

import os
import threading
import time

import grpc
import pytest

from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import image_pb2
from tests.support import layers as L
from tests.support.images import default_config, push_image
from tests.support.proxy import RegistryProxy, Trickle
from tests.support.rpc import details
from tests.support.services import embedded_config, restart, start_service

SYSTEM = "default"


@pytest.fixture(scope="module")
def proxy(registry):
    proxy = RegistryProxy(registry.url)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, proxy):
    workdir = tmp_path_factory.mktemp("gateway")
    service = start_service("serve", embedded_config(workdir, registry_url=proxy.url,
                                                     systems=(SYSTEM, "second")), workdir)
    yield service, workdir
    service.stop()


def pull(stub, reference, **kwargs):
    request = pb.PullImageRequest(system=kwargs.pop("system", SYSTEM), reference=reference,
                                  **kwargs)
    return list(stub.PullImage(request, timeout=120))


def test_pull_streams_progress_until_ready_and_publishes_files(gateway, registry):
    service, workdir = gateway
    layers = [L.layer(L.file("bin/entry", b"x", 0o755)), L.layer(L.file("w/data", b"y"))]
    config = default_config(layers)
    config["config"] = {"Env": ["PATH=/bin", "A=1"], "Entrypoint": ["/entry"], "Cmd": ["--help"],
                        "WorkingDir": "/w", "User": "nobody", "Labels": {"k": "v"}}
    pushed = push_image(registry.url, "gw/app", "1", layers, config)
    responses = pull(service.stub(), "testreg/gw/app:1")
    states = [r.image.state for r in responses]
    assert states[-1] == image_pb2.IMAGE_STATE_READY, responses[-1].image.failure.message
    assert image_pb2.IMAGE_STATE_QUEUED in states or image_pb2.IMAGE_STATE_PULLING in states
    assert any(r.progress.stage == image_pb2.STAGE_CONVERTING for r in responses)
    image = responses[-1].image
    image_id = pushed.config_digest[7:]
    assert image.id == image_id
    assert list(image.tags) == ["testreg/gw/app:1"]
    assert image.manifest_digest == pushed.manifest_digest
    assert list(image.metadata.env) == ["PATH=/bin", "A=1"]
    assert list(image.metadata.entrypoint) == ["/entry"]
    assert list(image.metadata.cmd) == ["--help"]
    assert image.metadata.workdir == "/w" and image.metadata.user == "nobody"
    assert dict(image.metadata.labels) == {"k": "v"}
    assert image.format == "squashfs" and image.image_file == f"{image_id}.squashfs"
    image_dir = workdir / "images" / SYSTEM
    assert (image_dir / f"{image_id}.squashfs").stat().st_size == image.size_bytes
    assert (image_dir / f"{image_id}.meta").read_text().startswith("FORMAT: squashfs\n")
    assert image.last_pull_time.seconds > 0 and image.expire_time.seconds > image.last_pull_time.seconds
    lookup = service.stub().LookupImage(pb.LookupImageRequest(system=SYSTEM,
                                                              reference="testreg/gw/app:1"))
    assert lookup.image.id == image_id and lookup.image.state == image_pb2.IMAGE_STATE_READY
    by_id = service.stub().LookupImage(pb.LookupImageRequest(system=SYSTEM, type="id",
                                                             reference=image_id))
    assert by_id.image.metadata.workdir == "/w"


def test_twenty_concurrent_pulls_make_one_job(gateway, registry, proxy):
    service, _ = gateway
    push_image(registry.url, "gw/dedup", "1", [L.layer(L.file("f", os.urandom(200_000))),
                                               L.layer(L.file("g", b"g"))])
    proxy.faults.append(Trickle(chunk_size=16 * 1024, delay=0.02))  # keep the job running
    proxy.clear()
    results: list = [None] * 20
    barrier = threading.Barrier(20)

    def one(index):
        stub = service.stub()
        barrier.wait()
        results[index] = pull(stub, "testreg/gw/dedup:1")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    finals = [r[-1].image for r in results]
    assert all(f.state == image_pb2.IMAGE_STATE_READY for f in finals)
    assert len({f.id for f in finals}) == 1
    assert proxy.count("GET", r"/manifests/") == 1, "one job resolved the manifest"
    assert proxy.blob_gets() == 3, "two layers and the config, downloaded once"


def test_ready_image_is_served_without_a_new_pull_within_update_timeout(gateway, registry, proxy):
    service, _ = gateway
    push_image(registry.url, "gw/fresh", "1", [L.layer(L.file("f", b"fresh"))])
    first = pull(service.stub(), "testreg/gw/fresh:1")[-1].image
    proxy.clear()
    started = time.monotonic()
    again = pull(service.stub(), "testreg/gw/fresh:1")
    assert len(again) == 1 and again[0].image.state == image_pb2.IMAGE_STATE_READY
    assert again[0].image.id == first.id
    assert proxy.count("GET") == 0 and proxy.count("HEAD") == 0
    assert time.monotonic() - started < 5


def test_old_image_is_rechecked_by_digest_and_rebuilt_only_when_changed(
        tmp_path, registry, proxy):
    config = embedded_config(tmp_path, registry_url=proxy.url, PullUpdateTimeout=0)
    service = start_service("serve", config, tmp_path)
    try:
        push_image(registry.url, "gw/moving", "1", [L.layer(L.file("v", b"one"))])
        first = pull(service.stub(), "testreg/gw/moving:1")[-1].image
        proxy.clear()
        same = pull(service.stub(), "testreg/gw/moving:1")[-1].image
        assert same.state == image_pb2.IMAGE_STATE_READY and same.id == first.id
        assert proxy.count("GET", r"/manifests/") == 1
        assert proxy.blob_gets() == 0, "the manifest digest is unchanged: nothing downloaded"
        push_image(registry.url, "gw/moving", "1", [L.layer(L.file("v", b"two"))])
        moved = pull(service.stub(), "testreg/gw/moving:1")[-1].image
        assert moved.state == image_pb2.IMAGE_STATE_READY and moved.id != first.id
        stub = service.stub()
        tag = stub.LookupImage(pb.LookupImageRequest(system=SYSTEM, reference="testreg/gw/moving:1"))
        assert tag.image.id == moved.id
        old = stub.LookupImage(pb.LookupImageRequest(system=SYSTEM, type="id", reference=first.id))
        assert old.image.state == image_pb2.IMAGE_STATE_READY and list(old.image.tags) == []
    finally:
        service.stop()


def test_failed_pull_keeps_its_cause_and_can_be_retried(gateway, registry):
    service, _ = gateway
    failed = pull(service.stub(), "testreg/gw/later:1")[-1].image
    assert failed.state == image_pb2.IMAGE_STATE_FAILED
    assert failed.failure.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "gw/later" in failed.failure.message
    lookup = service.stub().LookupImage(pb.LookupImageRequest(system=SYSTEM,
                                                              reference="testreg/gw/later:1"))
    assert lookup.image.state == image_pb2.IMAGE_STATE_FAILED
    assert lookup.image.failure.message == failed.failure.message
    jobs = service.stub().ListJobs(pb.ListJobsRequest(system=SYSTEM)).jobs
    assert any(j.reference.endswith("gw/later:1") and j.state == pb.JOB_STATE_FAILED
               and j.failure.message for j in jobs)
    push_image(registry.url, "gw/later", "1", [L.layer(L.file("now", b"here"))])
    retried = pull(service.stub(), "testreg/gw/later:1")[-1].image
    assert retried.state == image_pb2.IMAGE_STATE_READY and not retried.failure.message


def test_no_wait_returns_the_current_record_at_once(gateway, registry):
    service, _ = gateway
    push_image(registry.url, "gw/nowait", "1", [L.layer(L.file("n", b"n"))])
    responses = pull(service.stub(), "testreg/gw/nowait:1", no_wait=True)
    assert len(responses) == 1
    assert responses[0].image.state in (image_pb2.IMAGE_STATE_QUEUED, image_pb2.IMAGE_STATE_PULLING,
                                        image_pb2.IMAGE_STATE_CONVERTING,
                                        image_pb2.IMAGE_STATE_TRANSFERRING,
                                        image_pb2.IMAGE_STATE_READY)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        image = service.stub().LookupImage(pb.LookupImageRequest(
            system=SYSTEM, reference="testreg/gw/nowait:1")).image
        if image.state == image_pb2.IMAGE_STATE_READY:
            break
        time.sleep(0.2)
    assert image.state == image_pb2.IMAGE_STATE_READY


def test_list_images_pages_through_a_systems_images(gateway, registry):
    service, _ = gateway
    for n in range(3):
        push_image(registry.url, f"gw/list{n}", "1", [L.layer(L.file("n", str(n).encode()))])
        pull(service.stub(), f"testreg/gw/list{n}:1", system="second")
    stub = service.stub()
    first = stub.ListImages(pb.ListImagesRequest(system="second", page_size=2))
    assert len(first.images) == 2 and first.next_page_token
    rest = stub.ListImages(pb.ListImagesRequest(system="second", page_size=2,
                                                page_token=first.next_page_token))
    assert len(rest.images) == 1 and not rest.next_page_token
    tags = {t for image in [*first.images, *rest.images] for t in image.tags}
    assert tags == {f"testreg/gw/list{n}:1" for n in range(3)}


@pytest.mark.parametrize("request_, code, fragment", [
    (pb.LookupImageRequest(system="nosuch", reference="x"), grpc.StatusCode.NOT_FOUND,
     "known systems: default, second"),
    (pb.LookupImageRequest(system=SYSTEM, reference="Bad Ref"), grpc.StatusCode.INVALID_ARGUMENT,
     "whitespace"),
    (pb.LookupImageRequest(system=SYSTEM, reference="testreg/never/pulled:1"),
     grpc.StatusCode.NOT_FOUND, "pull it first"),
    (pb.LookupImageRequest(system="", reference="x"), grpc.StatusCode.INVALID_ARGUMENT,
     "system is required"),
    (pb.LookupImageRequest(system=SYSTEM, type="id", reference="zz"),
     grpc.StatusCode.INVALID_ARGUMENT, "invalid image id"),
])
def test_bad_requests_get_actionable_status_codes(gateway, request_, code, fragment):
    service, _ = gateway
    with pytest.raises(grpc.RpcError) as info:
        service.stub().LookupImage(request_, timeout=10)
    assert info.value.code() == code
    assert fragment in details(info.value)


@pytest.mark.parametrize("state", [99, -1])
def test_list_images_with_an_unknown_state_is_invalid_argument(gateway, state):
    service, _ = gateway
    with pytest.raises(grpc.RpcError) as info:
        service.stub().ListImages(pb.ListImagesRequest(system=SYSTEM, state=state), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"unknown image state {state}" in details(info.value)
    assert "5 (READY)" in details(info.value)
    assert "Traceback" not in service.log()


def test_pull_of_unknown_system_names_the_known_ones(gateway):
    service, _ = gateway
    with pytest.raises(grpc.RpcError) as info:
        pull(service.stub(), "ubuntu:24.04", system="nosuch")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "known systems: default, second" in details(info.value)


def test_gateway_restart_in_the_middle_of_a_pull_resumes_it(tmp_path, registry):
    proxy = RegistryProxy(registry.url)
    service = start_service("serve", embedded_config(tmp_path, registry_url=proxy.url), tmp_path)
    try:
        push_image(registry.url, "gw/restart", "1",
                   [L.layer(L.file("big", os.urandom(2 * 1024 * 1024)), compression="none")])
        proxy.faults.append(Trickle(chunk_size=32 * 1024, delay=0.05))  # ~3 s download
        response = pull(service.stub(), "testreg/gw/restart:1", no_wait=True)[0]
        assert response.image.state != image_pb2.IMAGE_STATE_READY
        while proxy.blob_gets() == 0:
            time.sleep(0.05)
        service.kill()
        service = restart(service)
        final = pull(service.stub(), "testreg/gw/restart:1")[-1].image
        assert final.state == image_pb2.IMAGE_STATE_READY
        image_dir = tmp_path / "images" / SYSTEM
        assert sorted(p.name for p in image_dir.iterdir()) == sorted(
            [f"{final.id}.squashfs", f"{final.id}.meta"])
        jobs = service.stub().ListJobs(pb.ListJobsRequest()).jobs
        assert not [j for j in jobs if j.state in (pb.JOB_STATE_WAITING, pb.JOB_STATE_RUNNING)]
    finally:
        service.stop()
        proxy.stop()
