"""TLS on the gateway's port (a self-signed certificate made here with `cryptography`)
and the refusal to listen beyond loopback without TLS and MUNGE."""


from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from imagegw.client import GatewayClient, NotFound, Unavailable
from tests.integration.trust_site import SYSTEM, trust_config
from tests.support.munge import make_credential
from tests.support.registry import RegistryServer
from tests.support.services import IMAGEGW, start_service


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagegw test gateway")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "gateway.pem", directory / "gateway.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_gateway_serves_tls_to_clients_that_trust_its_certificate(
    tmp_path: Path, registry: RegistryServer, munge_socket: str,
) -> None:
    cert, key = self_signed(tmp_path)
    config = trust_config(tmp_path, munge_socket, registry_url=registry.url,
                          TLSCertificate=str(cert), TLSKey=str(key))
    service = start_service("serve", config, tmp_path, expect_healthy=False)
    try:
        credential = lambda: make_credential(munge_socket)  # noqa: E731
        with GatewayClient([service.address], ca_cert=str(cert), timeout=10,
                           credential_provider=credential) as client:
            assert list(client.list_images(SYSTEM)) == []
            with pytest.raises(NotFound):
                client.lookup(SYSTEM, "testreg/none:1")
        with GatewayClient([service.address], timeout=5) as plain, pytest.raises(Unavailable):
            list(plain.list_images(SYSTEM))  # a plaintext client cannot talk to it
    finally:
        service.stop()


def test_gateway_refuses_to_listen_beyond_loopback_without_tls(
    tmp_path: Path, registry: RegistryServer, munge_socket: str,
) -> None:
    config_path = tmp_path / "gateway.json"
    config_path.write_text(json.dumps(trust_config(tmp_path, munge_socket,
                                                   registry_url=registry.url)))
    # The check runs before anything binds: nothing ever listens on 0.0.0.0 here.
    done = subprocess.run([IMAGEGW, "serve", "--config", str(config_path), "--listen",
                           "0.0.0.0:0"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 1
    assert "AllowInsecureListen" in done.stderr and "TLSCertificate" in done.stderr
