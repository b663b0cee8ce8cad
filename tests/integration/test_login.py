"""Registry logins at the real gateway against a real basic-auth registry (alice /
wonderland): checked at login, sealed in MUNGE or sent over loopback, used for the
user's own pulls only, and never written anywhere in the clear."""


from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from imagegw.client import GatewayClient, InvalidArgument, PermissionDenied, Unauthenticated
from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import image_pb2
from tests.integration.trust_site import (
    SYSTEM,
    UIDS,
    call,
    push_small_image,
    start_trust_gateway,
)
from tests.support.munge import make_credential
from tests.support.registry import RegistryServer
from tests.support.services import ServiceProcess

PASSWORD = "wonderland"
REFERENCE = "private/secret/app:1"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer,
         basic_registry: RegistryServer, munge_socket: str,
         ) -> Iterator[tuple[ServiceProcess, Path, str]]:
    push_small_image(basic_registry.url, "secret/app", "1", "secret", auth=("alice", PASSWORD))
    workdir = tmp_path_factory.mktemp("login")
    service = start_trust_gateway(workdir, munge_socket, registry_url=registry.url,
                                  private_url=basic_registry.url)
    yield service, workdir, munge_socket
    service.stop()


def client_as(site, user: str, *, sealed: bool) -> GatewayClient:
    service, _workdir, socket = site
    as_user = None if user == "root" else user
    return GatewayClient(
        [service.address],
        credential_provider=lambda: make_credential(socket, as_user=as_user),
        sealer=(lambda payload: make_credential(socket, as_user=as_user, payload=payload))
        if sealed else None)


def test_login_with_wrong_password_is_refused_and_says_so(site) -> None:
    with client_as(site, "daemon", sealed=True) as client, pytest.raises(PermissionDenied) as no:
        client.login(SYSTEM, "private", "alice", "not-the-password")
    assert "refused the credentials of registry user alice" in no.value.message
    assert "not-the-password" not in no.value.message


def test_sealed_login_lets_only_that_user_pull_from_the_private_registry(site) -> None:
    service, _workdir, socket = site
    with client_as(site, "daemon", sealed=True) as client:
        result = client.login(SYSTEM, "private", "alice", PASSWORD)
    assert result.sealed and result.message.startswith("credentials accepted by 127.0.0.1:")
    responses = call(service, socket, "PullImage", pb.PullImageRequest(
        system=SYSTEM, reference=REFERENCE, force=True), user="daemon")
    assert responses[-1].image.state == image_pb2.IMAGE_STATE_READY, responses[-1]
    # Another user (no login of their own) gets no help from daemon's credentials.
    responses = call(service, socket, "PullImage", pb.PullImageRequest(
        system=SYSTEM, reference="private/secret/app:1", force=True), user="nobody")
    assert responses[-1].image.state == image_pb2.IMAGE_STATE_FAILED
    assert responses[-1].image.failure.code == grpc.StatusCode.PERMISSION_DENIED.value[0]


def test_plain_login_over_loopback_works_and_logout_forgets(site) -> None:
    service, _workdir, socket = site
    with client_as(site, "bin", sealed=False) as client:
        result = client.login(SYSTEM, basic_registry_host(site), "alice", PASSWORD)
        assert not result.sealed
        responses = call(service, socket, "PullImage", pb.PullImageRequest(
            system=SYSTEM, reference=REFERENCE, force=True), user="bin")
        assert responses[-1].image.state == image_pb2.IMAGE_STATE_READY, responses[-1]
        assert client.logout(SYSTEM, "private")
        assert not client.logout(SYSTEM, "private")
    responses = call(service, socket, "PullImage", pb.PullImageRequest(
        system=SYSTEM, reference=REFERENCE, force=True), user="bin")
    assert responses[-1].image.state == image_pb2.IMAGE_STATE_FAILED


@pytest.mark.parametrize("username", ["alice:admin", "alice\nadmin", "alice\x1b[2J", "al\x7fice"])
@pytest.mark.parametrize("sealed", [True, False])
def test_user_names_basic_auth_cannot_carry_are_refused_before_the_registry(
        site, basic_registry, username, sealed) -> None:
    requests_before = basic_registry.log().count("/v2/")
    with client_as(site, "daemon", sealed=sealed) as client, pytest.raises(InvalidArgument) as no:
        client.login(SYSTEM, "private", username, PASSWORD)
    assert "contains ':' or a control character" in no.value.message
    assert "\n" not in no.value.message and "\x1b" not in no.value.message
    assert basic_registry.log().count("/v2/") == requests_before, "no registry was asked"


def test_an_image_pulled_with_a_registry_login_stays_private_to_its_puller(
        site, basic_registry) -> None:
    """Issue 18: user A's pull with their registry login became public, and user B, whom the
    registry had refused, was served it from the READY record."""
    service, _workdir, socket = site
    reference = "private/secret/app:1"
    with client_as(site, "daemon", sealed=True) as client:
        client.login(SYSTEM, "private", "alice", PASSWORD)
    pulled = call(service, socket, "PullImage", pb.PullImageRequest(
        system=SYSTEM, reference=reference), user="daemon")[-1].image
    assert pulled.state == image_pb2.IMAGE_STATE_READY, pulled
    assert list(pulled.user_acl) == [UIDS["daemon"]]
    # nobody has no login: not served from daemon's record, and the registry refuses them.
    try:  # NOT_FOUND, or the FAILED public pull of an earlier test: never daemon's image
        seen = call(service, socket, "LookupImage", pb.LookupImageRequest(
            system=SYSTEM, reference=reference), user="nobody").image
        assert seen.state != image_pb2.IMAGE_STATE_READY and seen.id != pulled.id, seen
    except grpc.RpcError as missing:
        assert missing.code() == grpc.StatusCode.NOT_FOUND
    refused = call(service, socket, "PullImage", pb.PullImageRequest(
        system=SYSTEM, reference=reference), user="nobody")[-1].image
    assert refused.state == image_pb2.IMAGE_STATE_FAILED
    assert refused.failure.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    # bin logs in: the registry is asked for the manifest with bin's login before bin gets
    # a copy of their own (force: bin's copy from an earlier test would answer for
    # PullUpdateTimeout, the registry having authorised bin then).
    manifests = basic_registry.log().count("/manifests/")
    with client_as(site, "bin", sealed=True) as client:
        client.login(SYSTEM, "private", "alice", PASSWORD)
        own = call(service, socket, "PullImage", pb.PullImageRequest(
            system=SYSTEM, reference=reference, force=True), user="bin")[-1].image
        client.logout(SYSTEM, "private")
    assert own.state == image_pb2.IMAGE_STATE_READY and list(own.user_acl) == [UIDS["bin"]]
    assert own.id == pulled.id and own.image_file != pulled.image_file
    assert basic_registry.log().count("/manifests/") > manifests


def test_anonymous_login_is_refused(site) -> None:
    service, _workdir, _socket = site
    with GatewayClient([service.address]) as client, pytest.raises(Unauthenticated):
        client.login(SYSTEM, "private", "alice", PASSWORD)


def test_no_password_in_any_log_record_or_file_of_the_gateway(site) -> None:
    service, workdir, _socket = site
    test_sealed_login_lets_only_that_user_pull_from_the_private_registry(site)
    found = [path for path in workdir.rglob("*") if path.is_file()
             and PASSWORD.encode() in path.read_bytes()]
    assert found == []
    assert PASSWORD not in service.log()
    assert list(workdir.rglob("*.sqlite3")), "the records should be in the workdir"


def basic_registry_host(site) -> str:
    service, _workdir, _socket = site
    import json
    config = json.loads(service.config_path.read_text())
    return config["Locations"]["private"]["url"].removeprefix("http://")


def test_shifterimg_login_reads_the_password_from_stdin_and_logout_forgets(site) -> None:
    import os
    import subprocess

    from tests.support.services import SHIFTERIMG

    service, _workdir, socket = site
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("IMAGEGW_")},
           "IMAGEGW_GATEWAY": service.address, "IMAGEGW_SYSTEM": SYSTEM,
           "MUNGE_SOCKET": socket}

    def shifterimg(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([SHIFTERIMG, *args], input=stdin, env=env, capture_output=True,
                              text=True, timeout=60, check=False)

    done = shifterimg("login", "private", "--username", "alice", "--password-stdin",
                      stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Login succeeded: credentials accepted by 127.0.0.1:")
    wrong = shifterimg("login", "private", "-u", "alice", "--password-stdin", stdin="nope\n")
    assert wrong.returncode == 1 and "refused the credentials" in wrong.stderr
    assert shifterimg("logout", "private").stdout.startswith("Removed your credentials")
    assert PASSWORD not in done.stdout + done.stderr + wrong.stderr
