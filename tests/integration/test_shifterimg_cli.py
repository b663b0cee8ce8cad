"""shifterimg run as a user runs it, against a real gateway, registry and munged.

Each test runs the installed `shifterimg` in its own process and checks what a
person or a script sees: stdout, stderr and the exit status.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagegw.client import GatewayClient, NotFound, PullFailed, munge_credential_provider
from tests.support.images import PushedImage, push_image
from tests.support.layers import executables
from tests.support.registry import RegistryServer
from tests.support.services import SHIFTERIMG, ServiceProcess, embedded_config, refused_address, start_service

RUN_TIMEOUT = 120.0
SYSTEMS = ("default", "dev")
REPOSITORY = "team/hello"


@dataclass
class Site:
    gateway: ServiceProcess
    registry: RegistryServer
    workdir: Path
    munge_socket: str
    image: PushedImage
    other: PushedImage

    @property
    def image_id(self) -> str:
        return self.image.config_digest.removeprefix("sha256:")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("IMAGEGW_", "MUNGE_", "UDIROOT_"))}
        env.update(IMAGEGW_GATEWAY=self.gateway.address, IMAGEGW_SYSTEM="default",
                   MUNGE_SOCKET=self.munge_socket,
                   UDIROOT_CONF=str(self.workdir / "absent-udiRoot.conf"))
        return env


@pytest.fixture(scope="module")
def site(
    registry: RegistryServer,
    munge_socket: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("shifterimg")
    image = push_image(registry.url, REPOSITORY, "1", [
        executables({"bin/hello": b"#!/bin/sh\necho hello\n"}),
        executables({"etc/motd": b"welcome\n" * 4096}),
    ])
    other = push_image(registry.url, REPOSITORY, "2", [executables({"etc/two": b"2\n"})])
    config = embedded_config(workdir, registry_url=registry.url, systems=SYSTEMS)
    for platform in config["Platforms"].values():
        platform["mungeSocketPath"] = munge_socket
    gateway = start_service("serve", config, workdir / "gateway")
    try:
        yield Site(gateway, registry, workdir, munge_socket, image, other)
    finally:
        gateway.stop()


def shifterimg(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SHIFTERIMG, *args], env=site.env(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, check=False)


def _ref(tag: str) -> str:
    return f"testreg/{REPOSITORY}:{tag}"


@pytest.fixture(scope="module")
def pulled(site: Site) -> subprocess.CompletedProcess[str]:
    """The first pull of the test image, as `shifterimg pull` showed it."""
    return shifterimg(site, "pull", _ref("1"))


def test_pull_reports_states_and_the_ready_image_id(
    site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout == f"Image ready: {site.image_id}\n"
    statuses = [line.rsplit("status: ", 1)[-1] for line in pulled.stderr.splitlines()
                if f"Pulling Image: docker:{_ref('1')}, status: " in line]
    assert statuses[-1] == "READY", pulled.stderr
    assert len(statuses) == len(set(statuses))


def test_pulled_image_file_is_in_the_system_image_directory(
    site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    shown = shifterimg(site, "-v", "lookup", _ref("1"))
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["state"] == "READY" and record["id"] == site.image_id
    assert (site.workdir / "images" / "default" / record["image_file"]).is_file()


def test_lookup_prints_exactly_the_image_id(
    site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    found = shifterimg(site, "lookup", f"docker:{_ref('1')}")
    assert (found.returncode, found.stdout, found.stderr) == (0, site.image_id + "\n", "")


def test_lookup_by_id_finds_the_same_image(
    site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    found = shifterimg(site, "lookup", f"id:{site.image_id}")
    assert (found.returncode, found.stdout) == (0, site.image_id + "\n"), found.stderr


def test_lookup_of_an_image_never_pulled_fails_without_output(site: Site) -> None:
    missing = shifterimg(site, "lookup", _ref("never-pulled"))
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr.startswith("shifterimg: ")


def test_images_lists_the_pulled_image_like_shifter(
    site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    listed = shifterimg(site, "images")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    row = next(row for row in rows if row[3] == site.image_id[:10])
    assert row[:3] == ["default", "docker", "READY"]
    assert len(row[4]) == len("YYYY-MM-DDTHH:MM:SS") and row[4][10] == "T"
    assert row[5].endswith(f"{REPOSITORY}:1")


def test_images_of_another_system_are_listed_separately(
    site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    listed = shifterimg(site, "--system", "dev", "images")
    assert (listed.returncode, listed.stdout) == (0, ""), listed.stderr


def test_queue_shows_a_table_of_jobs(
    site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    queue = shifterimg(site, "queue", "--all")
    assert queue.returncode == 0, queue.stderr
    assert queue.stdout.splitlines()[0].split() == [
        "ID", "SYSTEM", "REFERENCE", "STATE", "AGE", "FAILURE"]
    as_json = shifterimg(site, "-v", "queue")
    assert as_json.returncode == 0 and isinstance(json.loads(as_json.stdout), list)


def test_pull_of_a_missing_image_exits_1_with_the_cause(site: Site) -> None:
    failed = shifterimg(site, "pull", _ref("does-not-exist"))
    assert failed.returncode == 1
    assert failed.stdout == ""
    message = failed.stderr.splitlines()[-1]
    assert message.startswith("shifterimg: pull failed: "), failed.stderr
    assert "does-not-exist" in message or "not found" in message.lower() or (
        "unknown" in message.lower())


def test_unknown_system_exits_1_naming_the_known_systems(site: Site) -> None:
    result = shifterimg(site, "-s", "nosuch", "lookup", _ref("1"))
    assert result.returncode == 1
    assert result.stderr.startswith("shifterimg: ")
    assert "nosuch" in result.stderr
    assert all(name in result.stderr for name in SYSTEMS), result.stderr


def test_bad_reference_exits_1_with_the_reason(site: Site) -> None:
    result = shifterimg(site, "pull", "testreg/Team/UPPER::bad")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("shifterimg: ") and "pull failed" not in result.stderr


def test_unknown_user_for_a_private_image_is_a_usage_error(site: Site) -> None:
    result = shifterimg(site, "pull", "--user", "no-such-user-here", _ref("1"))
    assert result.returncode == 2
    assert "unknown user 'no-such-user-here'" in result.stderr


def test_an_unavailable_gateway_is_skipped_for_the_next(
    site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    down = refused_address()
    found = shifterimg(site, "-g", f"{down},{site.gateway.address}", "lookup", _ref("1"))
    assert (found.returncode, found.stdout) == (0, site.image_id + "\n"), found.stderr


def test_no_gateway_answering_exits_1_naming_the_address(site: Site) -> None:
    down = refused_address()
    result = shifterimg(site, "--gateway", down, "images")
    assert result.returncode == 1
    assert result.stderr.startswith(f"shifterimg: gateway {down}: ")


def test_pull_on_a_terminal_draws_a_progress_bar(site: Site) -> None:
    controller, terminal = pty.openpty()
    chunks: list[bytes] = []

    def read_all() -> None:
        while True:
            try:
                data = os.read(controller, 4096)
            except OSError:  # EIO once the child has closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    try:
        result = subprocess.run([SHIFTERIMG, "pull", "--force", _ref("2")], env=site.env(),
                                stdout=subprocess.PIPE, stderr=terminal, text=True,
                                timeout=RUN_TIMEOUT, check=False)
    finally:
        os.close(terminal)
    reader.join(timeout=10)
    os.close(controller)
    drawn = b"".join(chunks).decode(errors="replace")
    assert result.returncode == 0, drawn
    assert result.stdout == f"Image ready: {site.other.config_digest.removeprefix('sha256:')}\n"
    assert "\r" in drawn and "Pulling Image" not in drawn
    assert drawn.endswith("\n")


def test_sdk_pull_and_wait_returns_ready_image_with_fresh_credentials(
    site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    provide = munge_credential_provider(site.munge_socket)
    assert provide() != provide()
    with GatewayClient([site.gateway.address], credential_provider=provide) as client:
        image = client.pull_and_wait("default", _ref("1"))
        assert (image.state, image.id) == ("READY", site.image_id)
        assert image.last_pull is not None and image.last_pull.tzinfo is not None
        assert client.lookup_id("default", image.id).id == image.id
        assert any(i.id == image.id for i in client.list_images("default", state="READY"))


def test_sdk_raises_typed_errors(site: Site) -> None:
    provide = munge_credential_provider(site.munge_socket)
    with GatewayClient([site.gateway.address], credential_provider=provide) as client:
        with pytest.raises(NotFound):
            client.lookup("default", _ref("never-pulled"))
        with pytest.raises(PullFailed) as failed:
            client.pull_and_wait("default", _ref("also-missing"))
    assert failed.value.message
