"""Issue 24 end to end: a gateway with a signature policy, images signed by skopeo.

A real registry (its access log counts the blobs fetched), gpg keys, a file:// lookaside,
`imagegw serve` in its own process and `shifterimg` as a user runs it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imagegw.client import GatewayClient, NotFound, PullFailed
from tests.integration.test_oras_ready_made import SQUASHFS_MEDIA_TYPE, make_squashfs, oras_push
from tests.support import layers
from tests.support.images import push_image
from tests.support.registry import RegistryServer
from tests.support.services import (
    SHIFTERIMG,
    ServiceProcess,
    embedded_config,
    restart,
    start_service,
)
from tests.support.signing import GpgKey, SignatureSite

pytestmark = pytest.mark.timeout(600)
SYSTEM = "default"


@dataclass
class Site:
    gateway: ServiceProcess
    registry: RegistryServer
    alice: GpgKey
    carol: GpgKey
    policy: Path
    workdir: Path

    def client(self) -> GatewayClient:
        return GatewayClient([self.gateway.address])

    def shifterimg(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEGW_", "MUNGE_"))}
        env.update(IMAGEGW_GATEWAY=self.gateway.address, IMAGEGW_SYSTEM=SYSTEM,
                   UDIROOT_CONF=str(self.workdir / "absent-udiRoot.conf"))
        return subprocess.run([SHIFTERIMG, *args], env=env, capture_output=True, text=True,
                              timeout=120, check=False)

    def write_policy(self, requirements: list[dict[str, Any]]) -> None:
        self.policy.write_text(json.dumps({
            "default": [{"type": "reject"}],
            "transports": {"docker": {
                self.registry.host: requirements,
                f"{self.registry.host}/open": [{"type": "insecureAcceptAnything"}],
            }},
        }))

    def mark(self) -> int:
        return len(self.registry.log())

    def blob_gets_since(self, mark: int) -> int:
        """Blob downloads in the registry's access log since `mark`."""
        return len(re.findall(r'"GET /v2/\S+/blobs/sha256:', self.registry.log()[mark:]))

    def images(self) -> list[Path]:
        return sorted((self.workdir / "images" / SYSTEM).glob("*"))


def _signed_by(*keys: GpgKey) -> dict[str, Any]:
    return {"type": "signedBy", "keyType": "GPGKeys",
            "keyPaths": [str(key.public_key) for key in keys]}


@pytest.fixture(scope="module")
def site(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("trust-gateway")
    alice = GpgKey.generate(workdir / "alice", "alice")
    carol = GpgKey.generate(workdir / "carol", "carol")
    signing = SignatureSite(workdir / "signatures", registry.host)
    push_image(registry.url, "src/app", "1", [
        layers.executables({"bin/hello": b"#!/bin/sh\necho hello\n"})])
    signing.copy_signed(alice, "src/app:1", "team/app:1")
    signing.copy_signed(None, "src/app:1", "team/unsigned:1")
    signing.copy_signed(alice, "src/app:1", "team/shared:1")
    policy = workdir / "policy.json"
    config = embedded_config(workdir, registry_url=registry.url, SignaturePolicy=str(policy),
                             SignatureRegistriesDir=str(signing.registries_d))
    config["Locations"]["readymade"] = {"remotetype": "oras", "url": registry.url}
    site = Site(None, registry, alice, carol, policy, workdir)  # type: ignore[arg-type]
    site.write_policy([_signed_by(alice)])
    site.gateway = start_service("serve", config, workdir / "gateway")
    try:
        yield site
    finally:
        site.gateway.stop()
        for key in (alice, carol):
            key.stop_agent()


def test_refused_pull_is_permission_denied_fetches_no_layer_and_publishes_nothing(
        site: Site) -> None:
    mark = site.mark()
    pulled = site.shifterimg("pull", "testreg/team/unsigned:1")
    assert pulled.returncode != 0
    assert "PERMISSION_DENIED" in pulled.stderr or "refused" in pulled.stderr
    assert "is refused by the signature policy" in pulled.stderr
    assert f'scope transports.docker."{site.registry.host}"' in pulled.stderr
    assert "signedBy (keyPaths" in pulled.stderr
    assert "no signature found (looked in file://" in pulled.stderr
    assert site.blob_gets_since(mark) == 0
    assert '"GET /v2/team/unsigned/manifests/1 ' in site.registry.log()[mark:]
    assert site.images() == []
    with pytest.raises(PullFailed) as failed, site.client() as client:
        client.pull_and_wait(SYSTEM, "testreg/team/unsigned:1")
    assert failed.value.code == "PERMISSION_DENIED"
    audit = [json.loads(line.split(" ", 1)[1][line.split(" ", 1)[1].index("{"):])
             for line in site.gateway.log().splitlines() if '"action":"signature-check"' in line]
    assert any(entry["result"].startswith("refused:") and
               entry["image"].endswith("team/unsigned:1") for entry in audit)


def test_accepted_pull_records_the_signer_shown_by_lookup_and_images(site: Site) -> None:
    pulled = site.shifterimg("pull", "testreg/team/app:1")
    assert pulled.returncode == 0, pulled.stderr
    shown = json.loads(site.shifterimg("-v", "lookup", "testreg/team/app:1").stdout)
    assert shown["signers"] == [{"kind": "gpg", "fingerprint": site.alice.fingerprint,
                                 "identity": f"{site.registry.host}/team/app:1"}]
    assert shown["signature_scope"] == f'transports.docker."{site.registry.host}"'
    assert shown["signature_policy_digest"].startswith("sha256:")
    listed = json.loads(site.shifterimg("-v", "images").stdout)
    assert [image["signers"][0]["fingerprint"] for image in listed
            if image["id"] == shown["id"]] == [site.alice.fingerprint]


def test_concurrent_pulls_share_one_verification(site: Site) -> None:
    def pull() -> str:
        with site.client() as client:
            return client.pull_and_wait(SYSTEM, "testreg/team/shared:1").signers[0].fingerprint

    with ThreadPoolExecutor(max_workers=4) as pool:
        signers = list(pool.map(lambda _n: pull(), range(4)))
    assert signers == [site.alice.fingerprint] * 4
    checks = [line for line in site.gateway.log().splitlines()
              if '"action":"signature-check"' in line and 'team/shared:1"' in line]
    assert len(checks) == 1


def test_ready_made_oras_image_obeys_the_policy(site: Site, tmp_path: Path) -> None:
    squashfs = make_squashfs(tmp_path, {"etc/motd": b"ready made\n"})
    oras_push(site.registry.url, "tools/sq:1", [(squashfs, SQUASHFS_MEDIA_TYPE)])
    mark = site.mark()
    with site.client() as client, pytest.raises(PullFailed) as failed:
        client.pull_and_wait(SYSTEM, "readymade/tools/sq:1")
    assert failed.value.code == "PERMISSION_DENIED"
    assert "no signature found" in str(failed.value)
    assert site.blob_gets_since(mark) == 0


def test_policy_change_after_restart_is_judged_before_a_ready_answer(site: Site) -> None:
    with site.client() as client:
        first = client.pull_and_wait(SYSTEM, "testreg/team/app:1")
    # A new policy that still trusts alice: no READY answer from the record until a worker
    # has judged the manifest by it; then the record names the new policy.
    site.gateway.stop()
    site.write_policy([_signed_by(site.carol, site.alice)])
    site.gateway = restart(site.gateway)
    with site.client() as client:
        with pytest.raises(NotFound, match="another signature policy"):
            client.lookup(SYSTEM, "testreg/team/app:1")
        mark = site.mark()
        again = client.pull_and_wait(SYSTEM, "testreg/team/app:1")
        assert site.blob_gets_since(mark) == 0  # judged, not rebuilt
        assert again.id == first.id
        assert again.signature_policy_digest != first.signature_policy_digest
        assert client.lookup(SYSTEM, "testreg/team/app:1").signers[0].fingerprint == \
            site.alice.fingerprint
    # A stricter policy (carol only): the READY image is neither answered nor re-accepted.
    site.gateway.stop()
    site.write_policy([_signed_by(site.carol)])
    site.gateway = restart(site.gateway)
    with site.client() as client:
        with pytest.raises(PullFailed) as failed:
            client.pull_and_wait(SYSTEM, "testreg/team/app:1")
        assert failed.value.code == "PERMISSION_DENIED"
        assert "which this requirement does not trust" in str(failed.value)
        with pytest.raises(NotFound):
            client.lookup(SYSTEM, "testreg/team/app:1")
