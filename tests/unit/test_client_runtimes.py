"""The client side of the runtimes: which file each runtime runs, where the image
directory comes from, and enroot URIs turned into gateway references."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegw.client.models import ImageInfo
from imagegw.client.pyxis_importer import UsageError, enroot_uri_to_reference
from imagegw.client.runtimes import image_directory, runtime_file, runtime_path


def test_each_runtime_runs_the_squashfs_or_the_sif() -> None:
    assert runtime_file("abc.squashfs", "shifter") == "abc.squashfs"
    assert runtime_file("abc-1f2e.squashfs", "enroot") == "abc-1f2e.squashfs"
    assert runtime_file("abc-1f2e.squashfs", "apptainer") == "abc-1f2e.sif"
    assert runtime_file("abc.squashfs", "singularity") == "abc.sif"
    with pytest.raises(ValueError, match="unknown runtime 'docker'"):
        runtime_file("abc.squashfs", "docker")


def test_image_directory_comes_from_the_option_then_the_environment_then_udiroot(
        tmp_path: Path) -> None:
    conf = tmp_path / "udiRoot.conf"
    conf.write_text("system=gpu\nimagePath=/scratch/images  # shared\n")
    environ = {"UDIROOT_CONF": str(conf)}
    assert image_directory(environ) == "/scratch/images"
    assert image_directory({**environ, "IMAGEGW_IMAGE_DIR": "/env"}) == "/env"
    assert image_directory({**environ, "IMAGEGW_IMAGE_DIR": "/env"}, "/given") == "/given"
    assert image_directory({"UDIROOT_CONF": str(tmp_path / "absent")}) == ""


def test_runtime_path_needs_a_published_file_and_a_directory() -> None:
    image = ImageInfo(id="abc", system="s", type="docker", reference="r", tags=(),
                      state="READY", image_file="abc.squashfs")
    assert image.runtime_path("apptainer", "/images") == "/images/abc.sif"
    with pytest.raises(ValueError, match="imagePath"):
        runtime_path("abc.squashfs", "enroot", "")
    with pytest.raises(ValueError, match="no published file"):
        runtime_path("", "enroot", "/images")


@pytest.mark.parametrize(("uri", "reference"), [
    ("docker://ubuntu:24.04", "ubuntu:24.04"),
    ("docker://nvcr.io#nvidia/pytorch:24.01-py3", "nvcr.io/nvidia/pytorch:24.01-py3"),
    ("docker://me@nvcr.io#nvidia/pytorch:24.01-py3", "nvcr.io/nvidia/pytorch:24.01-py3"),
    ("docker://me@ubuntu", "ubuntu"),
    ("docker://reg:5000#team/app@sha256:" + "a" * 64, "reg:5000/team/app@sha256:" + "a" * 64),
    ("ubuntu:22.04", "ubuntu:22.04"),
])
def test_enroot_uris_become_gateway_references(uri: str, reference: str) -> None:
    assert enroot_uri_to_reference(uri) == reference


@pytest.mark.parametrize("uri", ["podman://ubuntu", "dockerd://ubuntu", "docker://", "docker://reg#"])
def test_uris_the_gateway_cannot_pull_are_usage_errors(uri: str) -> None:
    with pytest.raises(UsageError):
        enroot_uri_to_reference(uri)
