"""Issue 9: ready-made images stored as OCI artifacts (squashfs or SIF), pushed with oras
into a real docker-registry and pulled through a real gateway."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
from pathlib import Path

import oras.provider
import pytest

from imagegw.artifacts import SIF_MEDIA_TYPE, SQUASHFS_MEDIA_TYPE
from imagegw.pipeline.meta import parse_meta
from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import image_pb2
from tests.support.services import embedded_config, start_service
from tests.support.squashfs_tree import read_squashfs

SYSTEM = "default"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def make_squashfs(workdir: Path, files: dict[str, bytes]) -> Path:
    tree = workdir / "tree"
    for name, data in files.items():
        path = tree / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    output = workdir / "image.squashfs"
    subprocess.run(["mksquashfs", str(tree), str(output), "-noappend", "-quiet", "-no-progress",
                    "-all-root"], check=True, timeout=60, capture_output=True)
    return output


def make_sif(squashfs: bytes, output: Path) -> Path:
    """A minimal SIF file: global header, one primary-system squashfs partition descriptor."""
    descriptor_offset, data_offset = 4096, 8192
    header = struct.pack("<32s10s3s3s16s8q", b"#!/usr/bin/env run-singularity\n", b"SIF_MAGIC\0",
                         b"01\0", b"02\0", b"\x11" * 16, 0, 0, 0, 1, descriptor_offset, 585,
                         data_offset, len(squashfs))
    extra = struct.pack("<ii3s", 1, 2, b"02\0")  # squashfs, primary system partition, amd64
    descriptor = struct.pack("<i?IIIqqqqqqq128s384s", 0x4004, True, 1, 0xF0000001, 0,
                             data_offset, len(squashfs), len(squashfs), 0, 0, 0, 0,
                             b"rootfs", extra)
    assert len(descriptor) == 585
    body = header.ljust(descriptor_offset, b"\0") + descriptor
    output.write_bytes(body.ljust(data_offset, b"\0") + squashfs)
    return output


def oras_push(registry_url: str, target: str, files: list[tuple[Path, str]], *,
              config: tuple[Path, str] | None = None,
              annotations: dict[str, str] | None = None) -> str:
    host = registry_url.split("://", 1)[1]
    client = oras.provider.Registry(hostname=host, insecure=True)
    response = client.push(
        f"{host}/{target}", files=[f"{path}:{media}" for path, media in files],
        manifest_config=f"{config[0]}:{config[1]}" if config else None,
        manifest_annotations=annotations, disable_path_validation=True, quiet=True)
    return response.headers["Docker-Content-Digest"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, registry):
    workdir = tmp_path_factory.mktemp("oras-gateway")
    config = embedded_config(workdir, registry_url=registry.url)
    config["Platforms"][SYSTEM]["allowAnonymousPull"] = True
    config["Locations"]["readymade"] = {"remotetype": "oras", "url": registry.url}
    service = start_service("serve", config, workdir)
    yield service, workdir
    service.stop()


def pull(service, reference: str):
    request = pb.PullImageRequest(system=SYSTEM, reference=reference)
    return list(service.stub().PullImage(request, timeout=120))[-1].image


def test_squashfs_artifact_pulls_through_an_oras_location_with_config_metadata(
        gateway, registry, tmp_path):
    service, workdir = gateway
    squashfs = make_squashfs(tmp_path, {"bin/tool": b"#!/bin/sh\necho hi\n", "etc/motd": b"hello"})
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"config": {
        "Env": ["PATH=/bin", "MODE=ready"], "Entrypoint": ["/bin/tool"], "Cmd": ["--now"],
        "WorkingDir": "/etc", "User": "nobody", "Labels": {"site": "nersc"}}}))
    manifest_digest = oras_push(registry.url, "tools/sq:1", [(squashfs, SQUASHFS_MEDIA_TYPE)],
                                config=(config, OCI_CONFIG))

    image = pull(service, "readymade/tools/sq:1")

    assert image.state == image_pb2.IMAGE_STATE_READY, image.failure.message
    image_id = hashlib.sha256(squashfs.read_bytes()).hexdigest()
    assert image.id == image_id
    assert image.manifest_digest == manifest_digest
    assert list(image.metadata.env) == ["PATH=/bin", "MODE=ready"]
    assert list(image.metadata.entrypoint) == ["/bin/tool"]
    assert list(image.metadata.cmd) == ["--now"]
    assert image.metadata.workdir == "/etc" and image.metadata.user == "nobody"
    assert dict(image.metadata.labels) == {"site": "nersc"}
    published = workdir / "images" / SYSTEM / f"{image_id}.squashfs"
    assert published.read_bytes() == squashfs.read_bytes()
    meta = parse_meta((workdir / "images" / SYSTEM / f"{image_id}.meta").read_text())
    assert meta["FORMAT"] == ["squashfs"]
    assert meta["ENTRY"] == ["['/bin/tool']"] and meta["CMD"] == ["['--now']"]
    assert meta["WORKDIR"] == ["/etc"] and meta["ENV"] == ["PATH=/bin", "MODE=ready"]


def test_oras_prefix_selects_an_artifact_on_a_docker_location(gateway, registry, tmp_path):
    service, _ = gateway
    squashfs = make_squashfs(tmp_path, {"data": b"prefixed"})
    oras_push(registry.url, "tools/prefixed:2", [(squashfs, SQUASHFS_MEDIA_TYPE)])

    image = pull(service, "oras:testreg/tools/prefixed:2")

    assert image.state == image_pb2.IMAGE_STATE_READY, image.failure.message
    assert image.id == hashlib.sha256(squashfs.read_bytes()).hexdigest()
    assert list(image.tags) == ["oras:testreg/tools/prefixed:2"]


def test_sif_artifact_publishes_its_squashfs_partition_with_annotation_metadata(
        gateway, registry, tmp_path):
    service, workdir = gateway
    squashfs = make_squashfs(tmp_path, {"opt/app/run": b"sif payload"})
    sif = make_sif(squashfs.read_bytes(), tmp_path / "app.sif")
    runtime = {"Env": ["FROM=sif"], "Cmd": ["/opt/app/run"]}
    oras_push(registry.url, "tools/sif:1", [(sif, SIF_MEDIA_TYPE)],
              annotations={"io.imagegw.image.config": json.dumps(runtime)})

    image = pull(service, "readymade/tools/sif:1")

    assert image.state == image_pb2.IMAGE_STATE_READY, image.failure.message
    assert image.id == hashlib.sha256(sif.read_bytes()).hexdigest()
    assert list(image.metadata.env) == ["FROM=sif"] and list(image.metadata.cmd) == ["/opt/app/run"]
    published = workdir / "images" / SYSTEM / f"{image.id}.squashfs"
    assert published.read_bytes() == squashfs.read_bytes()
    assert read_squashfs(published)["opt/app/run"].size == len(b"sif payload")


def test_artifact_whose_bytes_are_not_squashfs_fails_and_publishes_nothing(
        gateway, registry, tmp_path):
    service, workdir = gateway
    fake = tmp_path / "fake.squashfs"
    fake.write_bytes(b"this is not a file system" * 100)
    oras_push(registry.url, "tools/fake:1", [(fake, SQUASHFS_MEDIA_TYPE)])

    image = pull(service, "readymade/tools/fake:1")

    assert image.state == image_pb2.IMAGE_STATE_FAILED
    assert "not a squashfs file" in image.failure.message
    fake_id = hashlib.sha256(fake.read_bytes()).hexdigest()
    assert not list((workdir / "images" / SYSTEM).glob(f"{fake_id}*"))


def test_artifact_with_a_truncated_squashfs_is_refused_by_unsquashfs(
        gateway, registry, tmp_path):
    service, _ = gateway
    squashfs = make_squashfs(tmp_path, {"big": bytes(range(256)) * 4096})
    broken = tmp_path / "broken.squashfs"
    broken.write_bytes(squashfs.read_bytes()[:2048])
    oras_push(registry.url, "tools/broken:1", [(broken, SQUASHFS_MEDIA_TYPE)])

    image = pull(service, "readymade/tools/broken:1")

    assert image.state == image_pb2.IMAGE_STATE_FAILED
    assert "squashfs file is damaged" in image.failure.message


def test_artifact_without_an_image_layer_names_the_media_types_it_needs(
        gateway, registry, tmp_path):
    service, _ = gateway
    readme = tmp_path / "README.txt"
    readme.write_text("just text")
    oras_push(registry.url, "tools/text:1", [(readme, "text/plain")])

    image = pull(service, "readymade/tools/text:1")

    assert image.state == image_pb2.IMAGE_STATE_FAILED
    assert SQUASHFS_MEDIA_TYPE in image.failure.message and "text/plain" in image.failure.message
