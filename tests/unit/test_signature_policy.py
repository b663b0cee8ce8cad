"""containers-policy.json(5) and registries.d as imagegw.signatures reads them: errors that
name the file and the key, the scope order, the signedIdentity rules, the strict payload."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from imagegw.cli import main
from imagegw.cli.doctor import FAIL, OK, check_signature_policy
from imagegw.domain.config import load_config
from imagegw.signatures import PolicyFormatError, load_policy
from imagegw.signatures.dockerref import parse_named, policy_namespaces
from imagegw.signatures.gpg import SignatureInvalid
from imagegw.signatures.payload import SIMPLE_SIGNING_TYPE, parse_payload
from imagegw.signatures.policy import IdentityRule
from imagegw.signatures.registries_d import load_registries_dir

ACCEPT = [{"type": "insecureAcceptAnything"}]
REJECT = [{"type": "reject"}]


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path = tmp_path / "cosign.pub"
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def _write(tmp_path: Path, policy: Any) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(policy if isinstance(policy, str) else json.dumps(policy))
    return path


def _docker(scope: str, requirements: list[dict[str, Any]]) -> dict[str, Any]:
    return {"default": REJECT, "transports": {"docker": {scope: requirements}}}


@pytest.mark.parametrize(("policy", "where", "what"), [
    ({"transports": {}}, "", "missing field 'default'"),
    ({"default": REJECT, "other": 1}, "", "unknown field 'other'"),
    ('{"default": [{"type": "reject"}], "default": []}', "", "duplicate field 'default'"),
    ({"default": []}, "default", "must not be empty"),
    (_docker("example.com", [{"type": "signedByMagic"}]),
     'transports.docker."example.com"[0].type', "unknown requirement type 'signedByMagic'"),
    (_docker("example.com", [{"type": "reject", "keyPath": "/x"}]),
     'transports.docker."example.com"[0]', "unknown field 'keyPath'"),
    (_docker("example.com", [{"type": "signedBy", "keyType": "X509Certificates",
                              "keyPath": "/x"}]),
     'transports.docker."example.com"[0].keyType', "unsupported key type"),
    (_docker("example.com", [{"type": "signedBy", "keyType": "GPGKeys",
                              "keyData": base64.b64encode(b"not a key").decode()}]),
     'transports.docker."example.com"[0].keyData', "no OpenPGP public key"),
    (_docker("example.com", [{"type": "signedBy", "keyType": "GPGKeys",
                              "keyPath": "/nonexistent/key.gpg"}]),
     'transports.docker."example.com"[0].keyPath', "cannot read key file"),
    (_docker("example.com", [{"type": "signedBy", "keyType": "GPGKeys"}]),
     'transports.docker."example.com"[0]', "exactly one of keyPath, keyPaths and keyData"),
    (_docker("example.com", [{"type": "sigstoreSigned", "keyData": "bm90IGEga2V5"}]),
     'transports.docker."example.com"[0].keyData', "not a PEM public key"),
    (_docker("Example.com/Team", ACCEPT), 'transports.docker."Example.com/Team"',
     "not a valid scope"),
    (_docker("*.example.com:5000", ACCEPT), 'transports.docker."*.example.com:5000"',
     "wildcard scope"),
    (_docker("example.com", [{"type": "sigstoreSigned", "keyPath": "KEY",
                              "signedIdentity": {"type": "exactReference",
                                                 "dockerReference": "example.com/app"}}]),
     'transports.docker."example.com"[0].signedIdentity.dockerReference',
     "needs a tag or a digest"),
    (_docker("example.com", [{"type": "sigstoreSigned", "keyPath": "KEY",
                              "signedIdentity": {"type": "matchSomething"}}]),
     'transports.docker."example.com"[0].signedIdentity.type', "unknown signedIdentity type"),
    (_docker("example.com", [{"type": "sigstoreSigned", "keyPath": "KEY",
                              "fulcio": {}}]),
     'transports.docker."example.com"[0].fulcio', "not supported"),
])
def test_policy_errors_name_the_file_and_the_key(tmp_path: Path, pem: Path, policy: Any,
                                                 where: str, what: str) -> None:
    if not isinstance(policy, str):
        policy = json.loads(json.dumps(policy).replace('"KEY"', json.dumps(str(pem))))
    path = _write(tmp_path, policy)
    with pytest.raises(PolicyFormatError) as error:
        load_policy(path)
    assert str(error.value).startswith(f"{path}: {where}{': ' if where else ''}")
    assert what in str(error.value)


def test_scopes_are_chosen_from_the_most_specific(tmp_path: Path) -> None:
    scopes = ["reg.example.com:5000/team/app:1", "reg.example.com:5000/team/app",
              "reg.example.com:5000/team", "reg.example.com:5000", "*.example.com", "*.com", ""]
    policy = load_policy(_write(tmp_path, {
        "default": REJECT, "transports": {"docker": {s: ACCEPT for s in scopes}}}))
    image = parse_named("reg.example.com:5000/team/app:1")
    assert policy.scope_for(image).name == 'transports.docker."reg.example.com:5000/team/app:1"'
    for scope in scopes[1:]:
        del policy.docker[scopes[scopes.index(scope) - 1]]
        assert policy.scope_for(image).name == f'transports.docker."{scope}"'
    del policy.docker[""]
    assert policy.scope_for(image).name == "default"


def test_docker_hub_images_are_named_docker_io() -> None:
    assert str(parse_named("ubuntu")) == "docker.io/library/ubuntu"
    assert parse_named("index.docker.io/team/app:1").name == "docker.io/team/app"
    assert policy_namespaces(parse_named("docker.io/library/ubuntu:24.04")) == [
        "docker.io/library/ubuntu", "docker.io/library", "docker.io", "*.io"]


@pytest.mark.parametrize(("rule", "image", "signed", "accepted"), [
    (IdentityRule("matchExact"), "r.io/a:1", "r.io/a:1", True),
    (IdentityRule("matchExact"), "r.io/a:1", "r.io/a:2", False),
    (IdentityRule("matchExact"), "r.io/a@sha256:" + "1" * 64, "r.io/a@sha256:" + "1" * 64,
     True),
    (IdentityRule(), "r.io/a:1", "r.io/a:1", True),
    (IdentityRule(), "r.io/a:1", "r.io/a", False),
    (IdentityRule(), "r.io/a@sha256:" + "1" * 64, "r.io/a:latest", True),
    (IdentityRule(), "r.io/a@sha256:" + "1" * 64, "r.io/b:latest", False),
    (IdentityRule("matchRepository"), "r.io/a:1", "r.io/a:2", True),
    (IdentityRule("matchRepository"), "r.io/a:1", "r.io/b:1", False),
    (IdentityRule("exactReference", reference=parse_named("r.io/x:9")), "r.io/a:1",
     "r.io/x:9", True),
    (IdentityRule("exactRepository", reference=parse_named("r.io/x")), "r.io/a:1",
     "r.io/x:anything", True),
    (IdentityRule("remapIdentity", prefix="mirror.io/team", signed_prefix="r.io/team"),
     "mirror.io/team/app:1", "r.io/team/app:1", True),
    (IdentityRule("remapIdentity", prefix="mirror.io/team", signed_prefix="r.io/team"),
     "mirror.io/teamx/app:1", "r.io/teamx/app:1", False),
    (IdentityRule("matchRepository"), "docker.io/library/busybox:1", "busybox:2", True),
])
def test_signed_identity_rules(rule: IdentityRule, image: str, signed: str,
                               accepted: bool) -> None:
    assert rule.accepts(parse_named(image), signed) is accepted


def _payload(**critical: Any) -> bytes:
    body = {"type": SIMPLE_SIGNING_TYPE, "image": {"docker-manifest-digest": "sha256:00"},
            "identity": {"docker-reference": "r.io/a:1"}}
    body.update(critical)
    return json.dumps({"critical": body, "optional": {"creator": "test"}}).encode()


@pytest.mark.parametrize(("payload", "why"), [
    (_payload(extra=1), "critical part has fields"),
    (_payload(type="cosign container image signature"), "critical.type"),
    (_payload(image={"docker-manifest-digest": 5}), "not a string"),
    (_payload(identity={}), "critical.identity"),
    (b'{"critical": {}, "critical": {}, "optional": {}}', "repeats the field"),
    (b"\x00\x01", "not JSON"),
])
def test_payload_is_read_strictly(payload: bytes, why: str) -> None:
    with pytest.raises(SignatureInvalid, match=why):
        parse_payload(payload, SIMPLE_SIGNING_TYPE)


def test_registries_d_most_specific_lookaside_and_default(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "default-docker:\n  lookaside: https://sigs.example.com/all\n"
        "docker:\n  reg.example.com/team:\n    lookaside: file:///srv/team\n")
    (tmp_path / "b.yaml").write_text(
        "docker:\n  reg.example.com:\n    use-sigstore-attachments: true\n")
    storage = load_registries_dir(tmp_path)
    assert storage.lookaside_for(parse_named("reg.example.com/team/app:1")) == "file:///srv/team"
    assert storage.lookaside_for(parse_named("reg.example.com/other:1")) == \
        "https://sigs.example.com/all"
    assert storage.sigstore_attachments_for(parse_named("reg.example.com/team/app:1"))
    assert not storage.sigstore_attachments_for(parse_named("quay.io/x:1"))


def test_registries_d_scope_in_two_files_is_an_error(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("docker:\n  reg.example.com:\n    lookaside: file:///x\n")
    with pytest.raises(PolicyFormatError, match=r"b.yaml: docker.reg.example.com: configured "
                                                r"in two files"):
        load_registries_dir(tmp_path)


def _site_config(tmp_path: Path, policy: Path) -> Path:
    config = tmp_path / "imagemanager.json"
    config.write_text(json.dumps({
        "SignaturePolicy": str(policy), "SignatureRegistriesDir": str(tmp_path),
        "Platforms": {"cluster": {"local": {"imageDir": str(tmp_path)}},
                      "open": {"local": {"imageDir": str(tmp_path)},
                               "signaturePolicy": str(_write(tmp_path / "open", {
                                   "default": ACCEPT}))}}}))
    return config


def test_check_config_reports_each_systems_policy(tmp_path: Path, pem: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "open").mkdir()
    policy = _write(tmp_path, _docker("reg.example.com", [
        {"type": "sigstoreSigned", "keyPath": str(pem)}]))
    assert main(["check-config", str(_site_config(tmp_path, policy))]) == 0
    out = capsys.readouterr().out
    assert f"signature policy of cluster: {policy} (sha256:" in out
    assert f"signature policy of open: {tmp_path / 'open' / 'policy.json'} (sha256:" in out


def test_check_config_names_the_policy_file_and_key(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "open").mkdir()
    policy = _write(tmp_path, _docker("reg.example.com", [{"type": "signedBy"}]))
    assert main(["check-config", str(_site_config(tmp_path, policy))]) != 0
    err = capsys.readouterr().err
    assert f'{policy}: transports.docker."reg.example.com"[0]: missing field \'keyType\'' in err


def test_doctor_loads_the_signature_policy(tmp_path: Path, pem: Path) -> None:
    (tmp_path / "open").mkdir()
    good = _write(tmp_path, _docker("reg.example.com", [
        {"type": "sigstoreSigned", "keyPath": str(pem)}]))
    findings = list(check_signature_policy(load_config(_site_config(tmp_path, good))))
    assert [(f.status, f.what) for f in findings if f.what.startswith("signature")] == [
        (OK, "signature policy of cluster"), (OK, "signature policy of open")]
    bad = _write(tmp_path, _docker("reg.example.com", [{"type": "sigstoreSigned",
                                                        "keyPath": "/nonexistent.pub"}]))
    findings = list(check_signature_policy(load_config(_site_config(tmp_path, bad))))
    assert [(f.status, f.what) for f in findings] == [(FAIL, "signature policy")]
    assert f'{bad}: transports.docker."reg.example.com"[0].keyPath: cannot read key file' \
        in findings[0].detail
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"Platforms": {"c": {"local": {"imageDir": str(tmp_path)}}}}))
    assert list(check_signature_policy(load_config(plain))) == []
