"""The gateway's signature verdicts equal skopeo's, case by case.

Images are signed by `skopeo copy --sign-by` with keys made by `gpg`, into a real
registry with a file:// lookaside; for every policy and image below the test asserts
our verdict (imagegw.signatures on the manifest bytes the registry serves) equals what
`skopeo --policy P --registries.d D copy docker://... dir:...` decides, and equals the
verdict containers-policy.json(5) documents for the case.
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from imagegw.domain.config import parse_config
from imagegw.domain.errors import PermissionDenied
from imagegw.domain.reference import parse_reference
from imagegw.registry.client import RegistryClient
from imagegw.registry.resolve import resolve_image
from imagegw.signatures import load_policy
from imagegw.signatures.registries_d import load_registries_dir
from imagegw.signatures.site import SystemTrust
from tests.support import layers
from tests.support.images import push_image, push_index
from tests.support.registry import RegistryServer, start_registry
from tests.support.signing import (
    GpgKey,
    SignatureSite,
    attach_sigstore,
    new_sigstore_key,
    sigstore_payload,
)

pytestmark = pytest.mark.timeout(600)


@dataclass
class World:
    registry: RegistryServer
    site: SignatureSite
    alice: GpgKey
    bob: GpgKey
    carol: GpgKey
    tmp: Path
    digests: dict[str, str]


def _image(registry: RegistryServer, repository: str, content: bytes) -> str:
    return push_image(registry.url, repository, "1",
                      [layers.layer(layers.file("data", content))]).manifest_digest


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("trust-vs-skopeo")
    with start_registry(tmp / "registry") as registry:
        alice = GpgKey.generate(tmp / "alice", "alice")
        bob = GpgKey.generate(tmp / "bob", "bob")
        carol = GpgKey.generate(tmp / "carol", "carol")
        site = SignatureSite(tmp / "site", registry.host)
        one = _image(registry, "src/one", b"one")
        two = _image(registry, "src/two", b"two")
        site.copy_signed(alice, "src/one:1", "team/app:1")           # alice signs
        site.copy_signed(bob, "src/one:1", "team/bobs:1")             # bob signs
        site.copy_signed(None, "src/one:1", "team/plain:1")           # unsigned
        site.copy_signed(alice, "src/one:1", "team/both:1")           # alice, then bob
        site.copy_signed(bob, "team/both:1", "team/both:1")
        site.copy_signed(None, "team/app:1", "team/renamed:1")        # alice's signature
        # claims team/app:1: a signature for another identity.
        site.copy_signed(alice, "src/one:1", "team/moved:1")          # the tag then moves
        site.copy_signed(None, "src/two:1", "team/moved:1")           # to an unsigned manifest
        site.copy_signed(alice, "src/one:1", "team/replayed:1")       # alice's signature for
        site.copy_signed(None, "src/two:1", "team/replayed:1")        # `one`, copied onto `two`
        replayed = site.signature_dir("team/replayed", two)
        replayed.mkdir(parents=True)
        shutil.copy(site.signature_dir("team/replayed", one) / "signature-1",
                    replayed / "signature-1")
        _signed_index(registry, site, alice)
        world = World(registry, site, alice, bob, carol, tmp, {"one": one, "two": two})
        try:
            yield world
        finally:
            for key in (alice, bob, carol):
                key.stop_agent()


def _signed_index(registry: RegistryServer, site: SignatureSite, alice: GpgKey) -> None:
    """A two-platform index signed by `skopeo copy --all` (the index and each manifest),
    then copies with only the index's or only the platform manifests' signatures."""
    images = [push_image(registry.url, "src/multi", None,
                         [layers.layer(layers.file("arch", arch.encode()))],
                         platform={"os": "linux", "architecture": arch})
              for arch in ("amd64", "arm64")]
    index = push_index(registry.url, "src/multi", "1", images)
    for name in ("index-only", "instances-only"):
        site.copy_signed(alice, "src/multi:1", f"multi/{name}:1", all_platforms=True)
    for image in images:
        shutil.rmtree(site.signature_dir("multi/index-only", image.manifest_digest))
    shutil.rmtree(site.signature_dir("multi/instances-only", index.digest))


def _signed_by(key: GpgKey, identity: dict[str, Any] | None = None, **how: Any
               ) -> dict[str, Any]:
    requirement: dict[str, Any] = {"type": "signedBy", "keyType": "GPGKeys"}
    requirement.update(how or {"keyPath": str(key.public_key)})
    if identity is not None:
        requirement["signedIdentity"] = identity
    return requirement


ACCEPT = [{"type": "insecureAcceptAnything"}]
REJECT = [{"type": "reject"}]


def _judge(world: World, policy_file: Path, reference: str, *,
           site: SignatureSite | None = None) -> None:
    """Our verdict on the manifest the registry serves: returns, or raises PermissionDenied."""
    config = parse_config({
        "Locations": {world.registry.host: {"url": world.registry.url}},
        "Platforms": {"x": {"local": {"imageDir": str(world.tmp)}}},
    })
    registries_d = (site or world.site).registries_d
    trust = SystemTrust(load_policy(policy_file), load_registries_dir(registries_d))
    parsed = parse_reference(f"{world.registry.host}/{reference}", config)
    with RegistryClient(parsed.registry_url, parsed.repository) as client:
        # The worker's own hook: the platform manifest's bytes, before any blob is fetched.
        resolve_image(client, parsed, config.platform("x"), on_manifest=lambda body, digest:
                      trust.judge(parsed, body, digest, client))


def _ours(world: World, policy_file: Path, reference: str, *,
          site: SignatureSite | None = None) -> bool:
    try:
        _judge(world, policy_file, reference, site=site)
    except PermissionDenied:
        return False
    return True


def _verdicts(world: World, name: str, policy: dict[str, Any], reference: str
              ) -> tuple[bool, bool]:
    policy_file = world.tmp / f"policy-{name}.json"
    policy_file.write_text(json.dumps(policy))
    return _ours(world, policy_file, reference), world.site.skopeo_accepts(
        policy_file, reference, world.tmp)


def _scoped(world: World, scope: str, requirements: list[dict[str, Any]],
            default: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"default": default or REJECT, "transports": {"docker": {scope: requirements}}}


def _cases(world: World) -> list[tuple[str, dict[str, Any], str, bool]]:
    host = world.registry.host
    alice, bob, carol = world.alice, world.bob, world.carol
    repo = f"{host}/team/app"
    key_data = base64.b64encode(alice.public_key.read_bytes()).decode()
    return [
        ("trusted-key", _scoped(world, host, [_signed_by(alice)]), "team/app:1", True),
        ("untrusted-key", _scoped(world, host, [_signed_by(alice)]), "team/bobs:1", False),
        ("unsigned", _scoped(world, host, [_signed_by(alice)]), "team/plain:1", False),
        ("tag-moved-to-unsigned", _scoped(world, host, [_signed_by(alice)]),
         "team/moved:1", False),
        ("signature-onto-another-digest", _scoped(world, host, [_signed_by(alice)]),
         "team/replayed:1", False),
        ("signature-for-another-identity", _scoped(world, host, [_signed_by(alice)]),
         "team/renamed:1", False),
        ("keyPaths", _scoped(world, host, [_signed_by(
            alice, keyPaths=[str(carol.public_key), str(alice.public_key)])]),
         "team/app:1", True),
        ("keyPaths-without-signer", _scoped(world, host, [_signed_by(
            alice, keyPaths=[str(carol.public_key), str(bob.public_key)])]),
         "team/app:1", False),
        ("keyData", _scoped(world, host, [_signed_by(alice, keyData=key_data)]),
         "team/app:1", True),
        ("two-signedBy-both-signed", _scoped(world, host, [_signed_by(alice), _signed_by(bob)]),
         "team/both:1", True),
        ("two-signedBy-one-signed", _scoped(world, host, [_signed_by(alice), _signed_by(bob)]),
         "team/app:1", False),
        ("matchExact", _scoped(world, host, [_signed_by(alice, {"type": "matchExact"})]),
         "team/app:1", True),
        ("matchExact-digest-reference", _scoped(
            world, host, [_signed_by(alice, {"type": "matchExact"})]),
         f"team/app@{world.digests['one']}", False),
        ("matchRepoDigestOrExact-digest-reference", _scoped(
            world, host, [_signed_by(alice, {"type": "matchRepoDigestOrExact"})]),
         f"team/app@{world.digests['one']}", True),
        ("matchRepository-renamed", _scoped(
            world, host, [_signed_by(alice, {"type": "matchRepository"})]),
         "team/renamed:1", False),
        ("exactReference", _scoped(world, host, [_signed_by(
            alice, {"type": "exactReference", "dockerReference": f"{repo}:1"})]),
         "team/renamed:1", True),
        ("exactReference-other-tag", _scoped(world, host, [_signed_by(
            alice, {"type": "exactReference", "dockerReference": f"{repo}:2"})]),
         "team/renamed:1", False),
        ("exactRepository", _scoped(world, host, [_signed_by(
            alice, {"type": "exactRepository", "dockerRepository": repo})]),
         "team/renamed:1", True),
        ("exactRepository-other", _scoped(world, host, [_signed_by(
            alice, {"type": "exactRepository", "dockerRepository": f"{host}/team/other"})]),
         "team/renamed:1", False),
        ("remapIdentity", _scoped(world, host, [_signed_by(alice, {
            "type": "remapIdentity", "prefix": f"{host}/team/renamed",
            "signedPrefix": f"{host}/team/app"})]), "team/renamed:1", True),
        ("remapIdentity-no-prefix-match", _scoped(world, host, [_signed_by(alice, {
            "type": "remapIdentity", "prefix": f"{host}/elsewhere",
            "signedPrefix": f"{host}/team/app"})]), "team/renamed:1", False),
        # Scopes, from the most specific down to "" and default.
        ("scope-tag-accepts", _scoped(world, f"{host}/team/plain:1", ACCEPT), "team/plain:1",
         True),
        ("scope-repository-rejects", {"default": ACCEPT, "transports": {"docker": {
            f"{host}/team/plain": REJECT, host: ACCEPT}}}, "team/plain:1", False),
        ("scope-namespace-over-host", {"default": REJECT, "transports": {"docker": {
            f"{host}/team": ACCEPT, host: REJECT}}}, "team/plain:1", True),
        ("scope-repository-over-namespace", {"default": ACCEPT, "transports": {"docker": {
            f"{host}/team/plain": REJECT, f"{host}/team": ACCEPT}}}, "team/plain:1", False),
        ("scope-tag-over-repository", {"default": REJECT, "transports": {"docker": {
            f"{host}/team/plain:1": ACCEPT, f"{host}/team/plain": REJECT}}},
         "team/plain:1", True),
        ("scope-wildcard-domain", {"default": REJECT, "transports": {"docker": {
            "*.0.0.1": ACCEPT}}}, "team/plain:1", True),
        ("scope-host-over-wildcard", {"default": ACCEPT, "transports": {"docker": {
            "*.0.0.1": ACCEPT, host: REJECT}}}, "team/plain:1", False),
        ("scope-transport-default", {"default": ACCEPT, "transports": {"docker": {
            "": REJECT}}}, "team/plain:1", False),
        ("scope-no-match-default-rejects", {"default": REJECT, "transports": {"docker": {
            "example.com": ACCEPT}}}, "team/plain:1", False),
        ("scope-no-match-default-accepts", {"default": ACCEPT, "transports": {"docker": {
            "example.com": REJECT}}}, "team/plain:1", True),
        ("accept-and-signedBy", _scoped(world, host, [*ACCEPT, _signed_by(alice)]),
         "team/plain:1", False),
        ("reject-and-signedBy", _scoped(world, host, [_signed_by(alice), *REJECT]),
         "team/app:1", False),
        # An index: the platform manifest pulled is judged, not the index.
        ("index-platform-manifests-signed", _scoped(world, host, [_signed_by(alice)]),
         "multi/instances-only:1", True),
        ("index-signed-only-at-the-top", _scoped(world, host, [_signed_by(alice)]),
         "multi/index-only:1", False),
    ]


CASE_NAMES = [
    "trusted-key", "untrusted-key", "unsigned", "tag-moved-to-unsigned",
    "signature-onto-another-digest", "signature-for-another-identity", "keyPaths",
    "keyPaths-without-signer", "keyData", "two-signedBy-both-signed", "two-signedBy-one-signed",
    "matchExact", "matchExact-digest-reference", "matchRepoDigestOrExact-digest-reference",
    "matchRepository-renamed", "exactReference", "exactReference-other-tag", "exactRepository",
    "exactRepository-other", "remapIdentity", "remapIdentity-no-prefix-match",
    "scope-tag-accepts", "scope-repository-rejects", "scope-namespace-over-host",
    "scope-repository-over-namespace", "scope-tag-over-repository", "scope-wildcard-domain",
    "scope-host-over-wildcard", "scope-transport-default", "scope-no-match-default-rejects",
    "scope-no-match-default-accepts", "accept-and-signedBy", "reject-and-signedBy",
    "index-platform-manifests-signed", "index-signed-only-at-the-top",
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_verdict_equals_skopeo(world: World, case: str) -> None:
    cases = {name: (policy, reference, expected)
             for name, policy, reference, expected in _cases(world)}
    assert list(cases) == CASE_NAMES
    policy, reference, expected = cases[case]
    ours, skopeo = _verdicts(world, case, policy, reference)
    assert (ours, skopeo) == (expected, expected)


# -- sigstore: Debian's skopeo cannot check these, so the expected verdict is the man page's.


@pytest.fixture(scope="module")
def sigstore_world(world: World) -> dict[str, Any]:
    registry = world.registry
    trusted, trusted_pem = new_sigstore_key(world.tmp, "cosign")
    other, other_pem = new_sigstore_key(world.tmp, "other")
    one, two = world.digests["one"], world.digests["two"]
    host = registry.host
    world.site.copy_signed(None, "src/one:1", "sig/good:1")
    attach_sigstore(registry.url, "sig/good", one,
                    [(sigstore_payload(f"{host}/sig/good:1", one), trusted)])
    world.site.copy_signed(None, "src/one:1", "sig/other:1")
    attach_sigstore(registry.url, "sig/other", one,
                    [(sigstore_payload(f"{host}/sig/other:1", one), other)])
    world.site.copy_signed(None, "src/two:1", "sig/replayed:1")
    attach_sigstore(registry.url, "sig/replayed", two,
                    [(sigstore_payload(f"{host}/sig/replayed:1", one), trusted)])
    world.site.copy_signed(world.alice, "src/one:1", "sig/both:1")
    attach_sigstore(registry.url, "sig/both", one,
                    [(sigstore_payload(f"{host}/sig/both:1", one), trusted)])
    return {"trusted": trusted_pem, "other": other_pem}


def _sigstore(pem: Path) -> dict[str, Any]:
    return {"type": "sigstoreSigned", "keyPath": str(pem)}


@pytest.mark.parametrize(("reference", "requirements", "expected"), [
    ("sig/good:1", ["trusted"], True),
    ("sig/other:1", ["trusted"], False),
    ("sig/replayed:1", ["trusted"], False),
    ("team/plain:1", ["trusted"], False),
    ("sig/both:1", ["trusted", "alice"], True),
    ("sig/good:1", ["trusted", "alice"], False),
])
def test_sigstore_verdicts(world: World, sigstore_world: dict[str, Any], reference: str,
                           requirements: list[str], expected: bool) -> None:
    rules = [_signed_by(world.alice) if name == "alice" else _sigstore(sigstore_world[name])
             for name in requirements]
    policy_file = world.tmp / f"sigstore-{reference.replace('/', '_')}-{len(rules)}.json"
    policy_file.write_text(json.dumps(_scoped(world, world.registry.host, rules)))
    assert _ours(world, policy_file, reference) is expected


@pytest.mark.parametrize(("reference", "cause"), [
    ("team/plain:1", "no signature found (looked in file://"),
    ("team/bobs:1", "which this requirement does not trust"),
    ("team/replayed:1", "a signature for another image (digest"),
    ("team/renamed:1", "a signature for another identity"),
])
def test_refusal_names_scope_requirement_and_cause(world: World, reference: str,
                                                   cause: str) -> None:
    host = world.registry.host
    policy_file = world.tmp / "policy-messages.json"
    policy_file.write_text(json.dumps(_scoped(world, f"{host}/team", [_signed_by(world.alice)])))
    with pytest.raises(PermissionDenied) as refused:
        _judge(world, policy_file, reference)
    message = str(refused.value)
    assert f'scope transports.docker."{host}/team"' in message
    assert f'requirement transports.docker."{host}/team"[0] signedBy (keyPath ' in message
    assert cause in message


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def http_site(world: World) -> Iterator[SignatureSite]:
    """The same lookaside served over http://, named so in another registries.d."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(
        _QuietHandler, directory=str(world.site.lookaside)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield SignatureSite(world.tmp / "http-site", world.registry.host,
                            lookaside_url=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("reference", "expected"), [
    ("team/app:1", True), ("team/bobs:1", False), ("team/plain:1", False),
    ("team/replayed:1", False),
])
def test_http_lookaside_verdict_equals_skopeo(world: World, http_site: SignatureSite,
                                              reference: str, expected: bool) -> None:
    policy_file = world.tmp / "policy-http.json"
    policy_file.write_text(json.dumps(_scoped(world, world.registry.host,
                                              [_signed_by(world.alice)])))
    ours = _ours(world, policy_file, reference, site=http_site)
    assert (ours, http_site.skopeo_accepts(policy_file, reference, world.tmp)) == \
        (expected, expected)
