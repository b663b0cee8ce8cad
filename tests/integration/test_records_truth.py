"""Issue 25: a READY record is checked against the files, records belong to one
deployment, and `imagegw reconcile` reports and repairs what differs.

Real processes throughout: `imagegw serve`, the registry, sshd for the remote system,
`shifterimg` and `imagegw reconcile` run as a user runs them."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import layers as L
from tests.support.images import push_image
from tests.support.registry import RegistryServer
from tests.support.services import IMAGEGW, SHIFTERIMG, embedded_config, start_service
from tests.support.sshd import SshdServer

RUN_TIMEOUT = 120.0


def shifterimg(address: str, system: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("IMAGEGW_", "MUNGE_", "UDIROOT_"))}
    env.update(IMAGEGW_GATEWAY=address, IMAGEGW_SYSTEM=system,
               UDIROOT_CONF="/nonexistent/udiRoot.conf")
    return subprocess.run([SHIFTERIMG, *args], env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, check=False)


def reconcile(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGW_")}
    return subprocess.run([IMAGEGW, "reconcile", "--config", str(config_path), *args],
                          env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          check=False)


def test_local_files_deleted_behind_a_ready_record_are_not_answered_ready(
    tmp_path: Path, registry: RegistryServer,
) -> None:
    push_image(registry.url, "truth/local", "1", [L.layer(L.file("etc/marker", b"local"))])
    gateway = start_service("serve", embedded_config(tmp_path, registry_url=registry.url),
                            tmp_path)
    images = tmp_path / "images" / "default"
    try:
        pulled = shifterimg(gateway.address, "default", "pull", "testreg/truth/local:1")
        assert pulled.returncode == 0, pulled.stderr
        image_id = pulled.stdout.split()[-1]
        image, meta = images / f"{image_id}.squashfs", images / f"{image_id}.meta"
        assert image.exists() and meta.exists()

        # An admin's clean-up, inside PullUpdateTimeout.
        image.unlink()
        meta.unlink()
        time.sleep(1.2)  # past the lookup and stat caches
        lookup = shifterimg(gateway.address, "default", "lookup", "testreg/truth/local:1")
        assert lookup.returncode != 0, lookup.stdout
        assert "missing" in lookup.stderr and "is gone" in lookup.stderr, lookup.stderr
        assert "shifterimg -s default pull testreg/truth/local:1" in lookup.stderr

        again = shifterimg(gateway.address, "default", "pull", "testreg/truth/local:1")
        assert again.returncode == 0, again.stderr
        assert again.stdout.split()[-1] == image_id
        assert image.exists() and meta.exists(), "the pull published the image again"
        assert "converted before" in gateway.log(), "republished from the conversion cache"
        found = shifterimg(gateway.address, "default", "lookup", "testreg/truth/local:1")
        assert found.returncode == 0 and found.stdout.strip() == image_id, found.stderr

        # A short image file (a restore from an older snapshot) is not READY either.
        size = image.stat().st_size
        image.unlink()
        image.write_bytes(b"hsqs" + b"\0" * 96)
        time.sleep(1.2)
        short = shifterimg(gateway.address, "default", "lookup", "testreg/truth/local:1")
        assert short.returncode != 0 and "has 100 bytes" in short.stderr, short.stderr
        fixed = shifterimg(gateway.address, "default", "pull", "testreg/truth/local:1")
        assert fixed.returncode == 0, fixed.stderr
        assert image.stat().st_size == size
    finally:
        gateway.stop()


def test_remote_files_deleted_are_found_by_the_sweep_and_pulled_back(
    tmp_path: Path, registry: RegistryServer, sshd_target: SshdServer,
) -> None:
    push_image(registry.url, "truth/remote", "1", [L.layer(L.file("etc/marker", b"remote"))])
    remote_dir = Path(sshd_target.image_dir) / "truth"
    config = embedded_config(tmp_path, registry_url=registry.url, FileCheckInterval=1)
    config["Platforms"]["default"] = {
        "accesstype": "remote", "admins": ["root"], "allowAnonymousPull": True,
        "host": [f"127.0.0.1:{sshd_target.port}"],
        "ssh": {"username": sshd_target.user, "key": str(sshd_target.ed25519_key),
                "imageDir": str(remote_dir), "knownHosts": str(sshd_target.known_hosts)},
    }
    gateway = start_service("serve", config, tmp_path)
    try:
        pulled = shifterimg(gateway.address, "default", "pull", "testreg/truth/remote:1")
        assert pulled.returncode == 0, pulled.stderr
        image_id = pulled.stdout.split()[-1]
        (remote_dir / f"{image_id}.squashfs").unlink()
        (remote_dir / f"{image_id}.meta").unlink()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lookup = shifterimg(gateway.address, "default", "lookup", "testreg/truth/remote:1")
            if lookup.returncode != 0:
                break
            time.sleep(0.5)
        assert lookup.returncode != 0, "the sweep found the files gone"
        assert "EXPIRED" in lookup.stderr and "pull it again" in lookup.stderr, lookup.stderr
        while "file sweep of default: missing" not in gateway.log() and time.monotonic() < deadline:
            time.sleep(0.2)  # the sweep logs once it has removed what was left
        assert "file sweep of default: missing" in gateway.log()

        again = shifterimg(gateway.address, "default", "pull", "testreg/truth/remote:1")
        assert again.returncode == 0, again.stderr
        assert (remote_dir / f"{image_id}.squashfs").exists()
        assert (remote_dir / f"{image_id}.meta").read_text().startswith("FORMAT: squashfs")
    finally:
        gateway.stop()


def test_a_second_configuration_on_the_same_records_is_refused(
    tmp_path: Path, registry: RegistryServer,
) -> None:
    push_image(registry.url, "truth/deploy", "1", [L.layer(L.file("etc/marker", b"a"))])
    config_a = embedded_config(tmp_path, registry_url=registry.url)
    gateway = start_service("serve", config_a, tmp_path / "a")
    try:
        pulled = shifterimg(gateway.address, "default", "pull", "testreg/truth/deploy:1")
        assert pulled.returncode == 0, pulled.stderr
    finally:
        gateway.stop()

    # B: the same system name and data directory, another image directory.
    config_b = embedded_config(tmp_path, registry_url=registry.url)
    config_b["Platforms"]["default"]["local"]["imageDir"] = str(tmp_path / "images-b")
    with pytest.raises(RuntimeError) as refused:
        start_service("serve", config_b, tmp_path / "b")
    message = str(refused.value)
    assert "Platforms.default.local.imageDir" in message, message
    assert str(tmp_path / "images" / "default") in message and "another deployment" in message

    # The admin moved the images: reconcile takes the records over and retires the
    # ones whose files are not in B's directory; B then starts and pulls afresh.
    config_path = tmp_path / "b" / "serve.json"
    (tmp_path / "images-b").mkdir()  # (the admin moved nothing)
    moved = reconcile(config_path, "--retarget", "default", "--repair", "--grace", "0")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "missing" in moved.stdout and "[repaired]" in moved.stdout
    gateway = start_service("serve", config_b, tmp_path / "b")
    try:
        lookup = shifterimg(gateway.address, "default", "lookup", "testreg/truth/deploy:1")
        assert lookup.returncode != 0, "B does not answer READY for A's image"
        pulled = shifterimg(gateway.address, "default", "pull", "testreg/truth/deploy:1")
        assert pulled.returncode == 0, pulled.stderr
        assert (tmp_path / "images-b" / f"{pulled.stdout.split()[-1]}.squashfs").exists()
    finally:
        gateway.stop()


def test_reconcile_reports_then_repairs_a_prepared_image_directory(
    tmp_path: Path, registry: RegistryServer,
) -> None:
    for name in ("kept", "gone", "meta"):
        push_image(registry.url, f"truth/{name}", "1", [L.layer(L.file("etc/m", name.encode()))])
    config = embedded_config(tmp_path, registry_url=registry.url)
    gateway = start_service("serve", config, tmp_path)
    images = tmp_path / "images" / "default"
    ids = {}
    try:
        for name in ("kept", "gone", "meta"):
            pulled = shifterimg(gateway.address, "default", "pull", f"testreg/truth/{name}:1")
            assert pulled.returncode == 0, pulled.stderr
            ids[name] = pulled.stdout.split()[-1]
    finally:
        gateway.stop()
    (images / f"{ids['gone']}.squashfs").unlink()
    meta = images / f"{ids['meta']}.meta"
    right_meta = meta.read_bytes()
    meta.write_bytes(right_meta.replace(b"FORMAT: squashfs", b"FORMAT: squashfs\nENV: X=1"))
    orphan = images / ("0" * 64 + ".squashfs")
    orphan.write_bytes(b"hsqs" + b"\0" * 100)
    temporary = images / f".{ids['kept']}.squashfs.0123456789abcdef.partial"
    temporary.write_bytes(b"partial")
    config_path = tmp_path / "serve.json"
    before = sorted(p.name for p in images.iterdir())

    report = reconcile(config_path, "--grace", "0")
    assert report.returncode == 1, report.stdout + report.stderr
    lines = report.stdout
    assert f"missing        {ids['gone']}.squashfs" in lines, lines
    assert f"meta-mismatch  {ids['meta']}.meta" in lines, lines
    assert f"orphan         {orphan.name}: 104 bytes, no record names it" in lines, lines
    assert f"temporary      {temporary.name}" in lines, lines
    assert ids["kept"] not in lines.replace(temporary.name, ""), "a sound image is not reported"
    assert sorted(p.name for p in images.iterdir()) == before, "a report changes nothing"
    # Files younger than the grace period may belong to a publish in flight.
    recent = reconcile(config_path)
    assert "orphan" not in recent.stdout and "temporary" not in recent.stdout, recent.stdout

    repaired = reconcile(config_path, "--repair", "--grace", "0")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert repaired.stdout.count("[repaired]") == 4, repaired.stdout
    assert not orphan.exists() and not temporary.exists()
    assert meta.read_bytes() == right_meta
    assert (images / f"{ids['kept']}.squashfs").exists()
    assert not (images / f"{ids['gone']}.meta").exists(), "what was left of it is removed"
    clean = reconcile(config_path, "--grace", "0")
    assert clean.returncode == 0, clean.stdout
    assert "READY records" in clean.stdout and "  missing" not in clean.stdout

    gateway = start_service("serve", config, tmp_path)
    try:
        lookup = shifterimg(gateway.address, "default", "lookup", "testreg/truth/gone:1")
        assert lookup.returncode != 0 and "EXPIRED" in lookup.stderr, lookup.stderr
        kept = shifterimg(gateway.address, "default", "lookup", "testreg/truth/kept:1")
        assert kept.returncode == 0 and kept.stdout.strip() == ids["kept"]
    finally:
        gateway.stop()
