"""Sigstore keys of every kind containers/image accepts verify their own signatures and
refuse others; a worker whose policy is not the gateway's refuses the job."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from imagegw.domain.config import parse_config
from imagegw.domain.errors import ConfigError
from imagegw.domain.model import BuildJob
from imagegw.domain.reference import parse_reference
from imagegw.signatures import load_site_trust
from imagegw.signatures.gpg import SignatureInvalid
from imagegw.signatures.sigstore import load_sigstore_key
from imagegw.worker.signature_check import SignatureCheck

PAYLOAD = b'{"critical": {}, "optional": null}'


def _sign(key: object, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key.sign(data)


@pytest.mark.parametrize("make", [
    lambda: ec.generate_private_key(ec.SECP256R1()),
    lambda: ec.generate_private_key(ec.SECP384R1()),
    lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ed25519.Ed25519PrivateKey.generate,
], ids=["ecdsa-p256", "ecdsa-p384", "rsa-2048", "ed25519"])
def test_sigstore_key_verifies_its_signature_and_refuses_others(make) -> None:
    key, other = make(), make()
    public = load_sigstore_key(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    public.verify(PAYLOAD, base64.b64encode(_sign(key, PAYLOAD)).decode())
    with pytest.raises(SignatureInvalid, match="not made by the trusted key"):
        public.verify(PAYLOAD, base64.b64encode(_sign(other, PAYLOAD)).decode())
    with pytest.raises(SignatureInvalid, match="not made by the trusted key"):
        public.verify(PAYLOAD + b" ", base64.b64encode(_sign(key, PAYLOAD)).decode())
    with pytest.raises(SignatureInvalid, match="base64"):
        public.verify(PAYLOAD, "not base64!")


def test_worker_with_another_policy_than_the_gateway_refuses_the_job(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    config = parse_config({"SignaturePolicy": str(policy),
                           "Platforms": {"x": {"local": {"imageDir": str(tmp_path)}}}})
    site = load_site_trust(config)
    reference = parse_reference("example.com/app:1", config)
    ours = site.policy_digest("x")
    assert ours.startswith("sha256:")
    SignatureCheck(site, BuildJob("j", "x", "example.com/app:1", policy_digest=ours),
                   reference, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="the gateway by sha256:0"):
        SignatureCheck(site, BuildJob("j", "x", "example.com/app:1",
                                      policy_digest="sha256:" + "0" * 64),
                       reference, None)  # type: ignore[arg-type]
