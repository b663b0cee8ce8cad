"""The Pyxis importer and the per-runtime lookups, run as processes against a real
gateway (with munged) publishing for Shifter, enroot and Apptainer."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.images import PushedImage, push_image
from tests.support.layers import executables
from tests.support.registry import RegistryServer
from tests.support.services import SHIFTERIMG, ServiceProcess, embedded_config, start_service

IMPORTER = str(Path(sys.executable).parent / "imagegw-pyxis-importer")
RUN_TIMEOUT = 120.0


@dataclass
class Site:
    gateway: ServiceProcess
    images: Path
    munge_socket: str
    image: PushedImage

    @property
    def image_id(self) -> str:
        return self.image.config_digest.removeprefix("sha256:")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("IMAGEGW_", "MUNGE_", "UDIROOT_"))}
        env.update(IMAGEGW_GATEWAY=self.gateway.address, IMAGEGW_SYSTEM="default",
                   MUNGE_SOCKET=self.munge_socket, UDIROOT_CONF=str(self.images / "absent"),
                   IMAGEGW_IMAGE_DIR=str(self.images))
        env.update(extra)
        return env


@pytest.fixture(scope="module")
def site(registry: RegistryServer, munge_socket: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("pyxis")
    image = push_image(registry.url, "team/tools", "1",
                       [executables({"bin/tool": b"#!/bin/sh\necho tool\n"})])
    config = embedded_config(workdir, registry_url=registry.url)
    platform = config["Platforms"]["default"]
    platform.update(mungeSocketPath=munge_socket, runtimes=["shifter", "enroot", "apptainer"])
    gateway = start_service("serve", config, workdir / "gateway")
    try:
        yield Site(gateway, Path(platform["local"]["imageDir"]), munge_socket, image)
    finally:
        gateway.stop()


def run(site: Site, *command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), env=site.env(**env), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, check=False)


def test_importer_get_pulls_through_the_gateway_and_prints_the_image(site: Site) -> None:
    done = run(site, IMPORTER, "get", "docker://testreg#team/tools:1")
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert done.stdout == f"{path}\n"
    assert path == site.images / f"{site.image_id}.squashfs"
    rc = subprocess.run(["unsquashfs", "-cat", str(path), "etc/rc"], capture_output=True,
                        check=True, text=True).stdout
    assert rc.startswith("# enroot-provenance: docker://")
    # A second user's job reuses the published image: same path, no new conversion.
    again = run(site, IMPORTER, "get", "docker://someone@testreg#team/tools:1")
    assert again.returncode == 0 and again.stdout == done.stdout
    assert run(site, IMPORTER, "release").returncode == 0


def test_importer_failure_exits_non_zero_with_the_gateways_message(site: Site) -> None:
    done = run(site, IMPORTER, "get", "docker://testreg#team/missing:1")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "imagegw-pyxis-importer: pull failed:" in done.stderr
    assert "team/missing" in done.stderr
    other = run(site, IMPORTER, "get", "podman://ubuntu")
    assert other.returncode == 2 and "only docker://" in other.stderr


def test_lookup_prints_each_runtimes_file_and_expiry_removes_them_all(site: Site) -> None:
    assert run(site, IMPORTER, "get", "docker://testreg#team/tools:1").returncode == 0
    paths = {}
    for runtime in ("shifter", "enroot", "apptainer", "singularity"):
        done = run(site, SHIFTERIMG, "lookup", "--runtime", runtime, "testreg/team/tools:1")
        assert done.returncode == 0, done.stderr
        paths[runtime] = Path(done.stdout.strip())
        assert paths[runtime].is_file()
    assert paths["shifter"] == paths["enroot"] == site.images / f"{site.image_id}.squashfs"
    assert paths["apptainer"] == paths["singularity"] == site.images / f"{site.image_id}.sif"
    no_dir = run(site, SHIFTERIMG, "lookup", "--runtime", "enroot", "testreg/team/tools:1",
                 IMAGEGW_IMAGE_DIR="")
    assert no_dir.returncode == 2 and "imagePath" in no_dir.stderr
    expired = run(site, SHIFTERIMG, "expire", "testreg/team/tools:1")
    assert expired.returncode == 0, expired.stderr
    assert sorted(p.name for p in site.images.iterdir() if not p.name.startswith(".")) == []


def test_an_imported_squashfs_gets_its_sif_and_expires_with_it(site: Site, tmp_path) -> None:
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "tool").write_text("#!/bin/sh\necho imported\n")
    image = tmp_path / "tool.squashfs"
    subprocess.run(["mksquashfs", str(tree), str(image), "-noappend", "-quiet", "-no-progress"],
                   check=True, capture_output=True, timeout=60)
    done = run(site, SHIFTERIMG, "import", str(image), "tool:1")
    assert done.returncode == 0, done.stderr
    sif = run(site, SHIFTERIMG, "lookup", "--runtime", "apptainer", "import/tool:1")
    assert sif.returncode == 0, sif.stderr
    dumped = subprocess.run(["siftool", "dump", "1", sif.stdout.strip()], capture_output=True,
                            check=True).stdout
    assert dumped == image.read_bytes()  # imported images are published as given
    assert run(site, SHIFTERIMG, "expire", "import/tool:1").returncode == 0
    assert not Path(sif.stdout.strip()).exists()


def test_a_ready_made_oras_image_gets_its_sif_too(site: Site, registry, tmp_path) -> None:
    from imagegw.artifacts import SQUASHFS_MEDIA_TYPE
    from tests.integration.test_oras_ready_made import make_squashfs, oras_push

    squashfs = make_squashfs(tmp_path, {"data": b"ready-made"})
    oras_push(registry.url, "tools/ready:1", [(squashfs, SQUASHFS_MEDIA_TYPE)])
    done = run(site, SHIFTERIMG, "pull", "oras:testreg/tools/ready:1")
    assert done.returncode == 0, done.stderr
    sif = run(site, SHIFTERIMG, "lookup", "--runtime", "singularity", "oras:testreg/tools/ready:1")
    assert sif.returncode == 0, sif.stderr
    dumped = subprocess.run(["siftool", "dump", "1", sif.stdout.strip()], capture_output=True,
                            check=True).stdout
    assert dumped == squashfs.read_bytes()
