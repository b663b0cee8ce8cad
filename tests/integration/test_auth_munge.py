"""MUNGE authentication and admin rights at the real gateway (a real munged, users
root, daemon and nobody): who may pull, list and expire, and the audit log."""


from __future__ import annotations

import json
import time
from collections.abc import Iterator

import grpc
import pytest

from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import image_pb2
from tests.integration.trust_site import (
    SYSTEM,
    call,
    push_small_image,
    rpc_error,
    start_trust_gateway,
)
from tests.support.munge import make_credential
from tests.support.registry import RegistryServer
from tests.support.services import ServiceProcess


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer,
            munge_socket: str) -> Iterator[ServiceProcess]:
    push_small_image(registry.url, "auth/app", "1", "one")
    service = start_trust_gateway(tmp_path_factory.mktemp("auth"), munge_socket,
                                  registry_url=registry.url)
    yield service
    service.stop()


def pull(reference: str = "testreg/auth/app:1") -> pb.PullImageRequest:
    return pb.PullImageRequest(system=SYSTEM, reference=reference)


def lookup(reference: str = "testreg/auth/app:1") -> pb.LookupImageRequest:
    return pb.LookupImageRequest(system=SYSTEM, reference=reference)


def test_authenticated_user_pulls_and_anonymous_caller_may_look_up_public_images(
    gateway: ServiceProcess, munge_socket: str,
) -> None:
    responses = call(gateway, munge_socket, "PullImage", pull(), user="nobody")
    assert responses[-1].image.state == image_pb2.IMAGE_STATE_READY
    found = call(gateway, munge_socket, "LookupImage", lookup(), user=None)
    assert found.image.id == responses[-1].image.id
    listed = call(gateway, munge_socket, "ListImages", pb.ListImagesRequest(system=SYSTEM),
                  user=None)
    assert [image.id for image in listed.images] == [found.image.id]


def test_anonymous_pull_is_refused_where_munge_is_configured(
    gateway: ServiceProcess, munge_socket: str,
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        call(gateway, munge_socket, "PullImage", pull(), user=None)
    code, message = rpc_error(refused)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "MUNGE credential" in message


def bad_credential_cases(munge_socket: str, other_munge_socket: str) -> dict[str, str]:
    replayed = make_credential(munge_socket)
    return {
        "garbage": "MUNGE:not-a-credential:",
        "wrong key": make_credential(other_munge_socket),
        "expired": make_credential(munge_socket, ttl=1, as_user="nobody"),
        "replayed": replayed,
    }


def test_bad_credentials_are_unauthenticated_with_the_reason(
    gateway: ServiceProcess, munge_socket: str, other_munge_socket: str,
) -> None:
    cases = bad_credential_cases(munge_socket, other_munge_socket)
    with gateway.channel() as channel:
        from imagegw.v1 import gateway_service_pb2_grpc
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        stub.LookupImage(lookup(), timeout=30, metadata=(("authentication", cases["replayed"]),))
        time.sleep(2.1)  # let the ttl=1 credential expire
        expected = {"garbage": "not a valid MUNGE credential", "wrong key": "this cluster",
                    "expired": "expired", "replayed": "replayed"}
        for name, credential in cases.items():
            with pytest.raises(grpc.RpcError) as refused:
                stub.LookupImage(lookup(), timeout=30,
                                 metadata=(("authentication", credential),))
            code, message = rpc_error(refused)
            assert code == grpc.StatusCode.UNAUTHENTICATED, name
            assert expected[name] in message, (name, message)


@pytest.mark.parametrize("user", ["nobody", "daemon", None])
def test_admin_only_calls_are_refused_for_everyone_else(
    gateway: ServiceProcess, munge_socket: str, user: str | None,
) -> None:
    calls = [
        ("ExpireImage", pb.ExpireImageRequest(system=SYSTEM, reference="testreg/auth/app:1")),
        ("ExpireUnusedImages", pb.ExpireUnusedImagesRequest(system=SYSTEM)),
    ]
    for method, request in calls:
        with pytest.raises(grpc.RpcError) as refused:
            call(gateway, munge_socket, method, request, user=user)
        code, message = rpc_error(refused)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (method, message)
        assert "only admins" in message


def test_admin_runs_auto_expiry_by_hand(gateway: ServiceProcess, munge_socket: str) -> None:
    done = call(gateway, munge_socket, "ExpireUnusedImages",
                pb.ExpireUnusedImagesRequest(system=SYSTEM), user="root")
    assert list(done.image_ids) == []  # nothing is 90 days old


def test_state_changing_calls_leave_json_audit_lines(
    gateway: ServiceProcess, munge_socket: str,
) -> None:
    call(gateway, munge_socket, "PullImage", pull(), user="daemon")
    with pytest.raises(grpc.RpcError):
        call(gateway, munge_socket, "ExpireImage",
             pb.ExpireImageRequest(system=SYSTEM, reference="testreg/auth/app:1"), user="daemon")
    lines = [json.loads(line.split("imagegw.audit: ", 1)[1])
             for line in gateway.log().splitlines() if "imagegw.audit: " in line]
    pulls = [e for e in lines if e["action"] == "pull" and e["uid"] == 1]
    assert pulls and pulls[-1]["result"] == "ok" and pulls[-1]["user"] == "daemon"
    assert pulls[-1]["image"] == "testreg/auth/app:1" and pulls[-1]["system"] == SYSTEM
    refused = [e for e in lines if e["action"] == "expire" and e["uid"] == 1]
    assert refused and refused[-1]["result"].startswith("PermissionDenied")
