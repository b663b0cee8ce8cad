"""The compiled imagegw-cpp client against a real gateway, registry and munged.

Each test runs the built binary as a user or a script would and checks stdout, stderr and
the exit status: ids on stdout, "imagegw: <CODE>: <message>" and exit 1 on errors.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.images import PushedImage, push_image
from tests.support.layers import executables
from tests.support.registry import RegistryServer
from tests.support.services import ServiceProcess, embedded_config, refused_address, start_service
from tests.support.slurm import build_cpp_client

RUN_TIMEOUT = 60.0
REPOSITORY = "team/cpp"


@dataclass
class Site:
    cli: Path
    gateway: ServiceProcess
    image: PushedImage
    munge_socket: str

    @property
    def image_id(self) -> str:
        return self.image.config_digest.removeprefix("sha256:")

    def run(self, *args: str, gateway: str | None = None) -> subprocess.CompletedProcess[str]:
        command = [str(self.cli), "--gateway", gateway or self.gateway.address,
                   "--system", "default", "--munge-socket", self.munge_socket, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                              check=False)


@pytest.fixture(scope="module")
def site(
    registry: RegistryServer,
    munge_socket: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    cli = build_cpp_client()
    workdir = tmp_path_factory.mktemp("cpp-client")
    image = push_image(registry.url, REPOSITORY, "1", [executables({"bin/hi": b"#!/bin/sh\necho hi\n"})])
    config = embedded_config(workdir, registry_url=registry.url)
    config["Platforms"]["default"]["mungeSocketPath"] = munge_socket
    gateway = start_service("serve", config, workdir / "gateway")
    try:
        yield Site(cli, gateway, image, munge_socket)
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def pulled(site: Site) -> subprocess.CompletedProcess[str]:
    """The first pull of the test image, as imagegw-cpp showed it."""
    return site.run("pull", f"docker:testreg/{REPOSITORY}:1")


def test_pull_prints_the_ready_image_id_and_progress_on_stderr(
    site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout == site.image_id + "\n"
    progress = [line for line in pulled.stderr.splitlines() if line.startswith("pull: ")]
    assert progress[-1] == "pull: READY", pulled.stderr


def test_lookup_prints_only_the_image_id(
    site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    found = site.run("lookup", f"docker:testreg/{REPOSITORY}:1")
    assert (found.returncode, found.stdout, found.stderr) == (0, site.image_id + "\n", "")


def test_bare_reference_is_looked_up_as_docker_image(
    site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    found = site.run("lookup", f"testreg/{REPOSITORY}:1")
    assert (found.returncode, found.stdout) == (0, site.image_id + "\n"), found.stderr


def test_lookup_by_id_prints_the_same_id(
    site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    found = site.run("lookup", f"id:{site.image_id}")
    assert (found.returncode, found.stdout) == (0, site.image_id + "\n"), found.stderr


def test_lookup_of_missing_image_exits_1_with_the_gateways_not_found_message(site: Site) -> None:
    missing = site.run("lookup", f"docker:testreg/{REPOSITORY}:never-pulled")
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr.startswith("imagegw: NOT_FOUND: "), missing.stderr
    assert f"testreg/{REPOSITORY}:never-pulled" in missing.stderr


def test_pull_of_image_missing_from_registry_exits_1_with_the_failure(site: Site) -> None:
    failed = site.run("pull", f"testreg/{REPOSITORY}:not-pushed")
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.splitlines()[-1].startswith("imagegw: NOT_FOUND: "), failed.stderr


def test_unreachable_first_gateway_falls_over_to_the_next(
    site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    gateways = f"{refused_address()},{site.gateway.address}"
    found = site.run("lookup", f"testreg/{REPOSITORY}:1", gateway=gateways)
    assert (found.returncode, found.stdout) == (0, site.image_id + "\n"), found.stderr


def test_no_reachable_gateway_reports_unavailable_naming_each_address(site: Site) -> None:
    closed = [refused_address(), refused_address()]
    failed = site.run("lookup", "ubuntu:24.04", gateway=",".join(closed))
    assert failed.returncode == 1
    assert failed.stderr.startswith("imagegw: UNAVAILABLE: "), failed.stderr
    assert all(address in failed.stderr for address in closed)


def test_silent_gateway_hits_the_deadline(site: Site) -> None:
    # A socket that accepts connections but never speaks HTTP/2.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        failed = site.run("--timeout", "1", "lookup", "ubuntu:24.04", gateway=address)
    assert failed.returncode == 1
    assert failed.stderr == (
        f"imagegw: DEADLINE_EXCEEDED: gateway {address} did not answer within 1 s\n"
    )


def test_credential_from_another_munge_key_is_refused(
    site: Site,
    other_munge_socket: str,
) -> None:
    command = [str(site.cli), "--gateway", site.gateway.address, "--munge-socket",
               other_munge_socket, "lookup", f"testreg/{REPOSITORY}:1"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                             check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith("imagegw: UNAUTHENTICATED: "), refused.stderr


def test_missing_munge_socket_is_reported_before_calling(site: Site, tmp_path: Path) -> None:
    absent = tmp_path / "no-munge.sock"
    command = [str(site.cli), "--gateway", site.gateway.address, "--munge-socket", str(absent),
               "lookup", f"testreg/{REPOSITORY}:1"]
    failed = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                            check=False)
    assert failed.returncode == 1
    assert failed.stderr.startswith("imagegw: UNAUTHENTICATED: cannot create a MUNGE credential")
    assert str(absent) in failed.stderr


def test_usage_error_exits_2_with_usage(site: Site) -> None:
    result = subprocess.run([str(site.cli), "--gateway", site.gateway.address, "lookup"],
                            capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    assert result.returncode == 2
    assert "usage: imagegw-cpp" in result.stderr
