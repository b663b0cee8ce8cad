"""Registries as an allow-list (issue 18): the gateway reaches configured Locations only,
AllowedRegistries opens public hosts by pattern, and no loopback, link-local or private
address is ever reached unless a Location names it, judged on the resolved addresses. A
listener on loopback records every connection: it must see none."""


from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from imagegw.domain.config import parse_config
from imagegw.domain.errors import InvalidRequest, PermissionDenied
from imagegw.gateway.core.access import Caller
from imagegw.gateway.core.logins import Logins
from imagegw.gateway.core.vault import CredentialVault
from imagegw.registry.client import RegistryClient
from imagegw.registry.policy import AddressGuard
from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import image_pb2
from tests.support import layers as L
from tests.support.images import push_image
from tests.support.registry import RegistryServer
from tests.support.rpc import details
from tests.support.services import ServiceProcess, embedded_config, start_service


class Recorder:
    """Listens on 127.0.0.1:PORT and [::1]:PORT and counts the connections it accepts."""

    def __init__(self) -> None:
        self.connections = 0
        self._sockets: list[socket.socket] = []
        for _attempt in range(20):
            v4 = socket.create_server(("127.0.0.1", 0))
            self.port = v4.getsockname()[1]
            try:
                v6 = socket.create_server(("::1", self.port), family=socket.AF_INET6)
            except OSError:
                v4.close()
                continue
            self._sockets = [v4, v6]
            break
        else:
            raise RuntimeError("no port free on both 127.0.0.1 and ::1")
        for listener in self._sockets:
            threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            self.connections += 1
            connection.close()

    def close(self) -> None:
        for listener in self._sockets:
            listener.close()


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    listening = Recorder()
    yield listening
    listening.close()


def spellings(port: int) -> list[str]:
    return [f"127.0.0.1:{port}", f"[::1]:{port}", f"localhost:{port}"]


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer
             ) -> Iterator[dict[str, ServiceProcess]]:
    """One gateway with the default policy, one that allows every host and port ("*:*")."""
    started = {}
    for name, extra in (("default", {}), ("everything", {"AllowedRegistries": ["*:*"]})):
        workdir = tmp_path_factory.mktemp(f"policy-{name}")
        config = embedded_config(workdir, registry_url=registry.url, **extra)
        started[name] = start_service("serve", config, workdir)
    yield started
    for service in started.values():
        service.stop()


def pull(service: ServiceProcess, reference: str) -> list[pb.PullImageResponse]:
    with service.channel() as channel:
        from imagegw.v1 import gateway_service_pb2_grpc

        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        return list(stub.PullImage(pb.PullImageRequest(system="default", reference=reference),
                                   timeout=120))


def refused(service: ServiceProcess, reference: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        pull(service, reference)
    return info.value.code(), details(info.value)


def test_a_registry_no_location_names_is_refused_and_never_contacted(gateways, recorder):
    for host in spellings(recorder.port):
        code, message = refused(gateways["default"], f"{host}/x:1")
        assert code == grpc.StatusCode.PERMISSION_DENIED, (host, message)
        assert "AllowedRegistries" in message and "Locations" in message
    assert recorder.connections == 0


def test_allowed_registries_never_open_loopback_even_by_name(gateways, recorder):
    for host in spellings(recorder.port):
        code, message = refused(gateways["everything"], f"{host}/x:1")
        assert code == grpc.StatusCode.PERMISSION_DENIED, (host, message)
        assert "loopback address" in message, message
    assert recorder.connections == 0


@pytest.mark.parametrize("host", ["127.0.0.1:0", "127.0.0.1:99999", "[::1]:0",
                                  "registry.example.org:65536"])
def test_malformed_ports_are_invalid_before_any_policy(gateways, host):
    code, message = refused(gateways["everything"], f"{host}/x:1")
    assert code == grpc.StatusCode.INVALID_ARGUMENT, message
    assert "port" in message


def test_a_location_written_by_its_address_is_reached_as_configured(gateways, registry):
    push_image(registry.url, "policy/app", "1", [L.layer(L.file("p", b"by address"))])
    final = pull(gateways["default"], f"{registry.host}/policy/app:1")[-1].image
    assert final.state == image_pb2.IMAGE_STATE_READY, final.failure.message


def test_login_follows_the_same_rules(tmp_path: Path, recorder, registry):
    config = parse_config(embedded_config(tmp_path, registry_url=registry.url,
                                          AllowedRegistries=["*:*"]))
    logins = Logins(config, CredentialVault(tmp_path / "vault", tmp_path / "vault.key"))
    alice = Caller(uid=1000, gid=1000, user="alice")
    for host in spellings(recorder.port):
        with pytest.raises(PermissionDenied, match="loopback address"):
            logins.login(alice, host, "alice", "secret")
    with pytest.raises(InvalidRequest, match="port"):
        logins.login(alice, "127.0.0.1:0", "alice", "secret")
    assert recorder.connections == 0


def test_the_registry_transport_of_an_unconfigured_registry_checks_every_connection(recorder):
    client = RegistryClient(f"http://localhost:{recorder.port}", "x/y",
                            address_check=AddressGuard())
    with client, pytest.raises(PermissionDenied, match="loopback address"):
        client.check_access()
    assert recorder.connections == 0
