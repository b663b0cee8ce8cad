"""`imagegw doctor` against real parts: munged, sshd, redis-server, real directories.

Each broken site breaks one thing of a healthy one and expects exactly that check to fail
(with a fix), so a check that fails for the wrong reason is caught too.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.munge import MungeDaemon
from tests.support.redis_server import RedisServer
from tests.support.services import IMAGEGW, refused_address
from tests.support.sshd import SshdServer

RUN_TIMEOUT = 120.0
SQUASHFS_TOOLS = ("unsquashfs", "sqfs2tar", "rdsquashfs", "tar2sqfs")


@pytest.fixture
def root() -> Iterator[Path]:
    """A directory other accounts may pass through (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="imagegw-doctor-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def local_config(root: Path, **changes: object) -> dict[str, Any]:
    for name in ("data", "cache", "expand", "images"):
        (root / name).mkdir(exist_ok=True)
    config: dict[str, Any] = {
        "DataDirectory": str(root / "data"),
        "CacheDirectory": str(root / "cache"),
        "ExpandDirectory": str(root / "expand"),
        "Locations": {"registry-1.docker.io": {"remotetype": "dockerv2"}},
        "Platforms": {"cluster": {"accesstype": "local", "admins": ["root"],
                                  "local": {"imageDir": str(root / "images")}}},
    }
    config.update(changes)
    return config


def remote_system(sshd: SshdServer, known_hosts: Path) -> dict[str, Any]:
    return {"accesstype": "remote", "admins": ["root"], "host": [f"{sshd.host}:{sshd.port}"],
            "ssh": {"username": sshd.user, "key": str(sshd.ed25519_key),
                    "imageDir": str(sshd.image_dir), "knownHosts": str(known_hosts),
                    "connectTimeout": 5}}


def doctor(root: Path, config: dict[str, Any], *args: str,
           path: str | None = None) -> subprocess.CompletedProcess[str]:
    config_file = root / "imagemanager.json"
    config_file.write_text(json.dumps(config))
    env = {key: value for key, value in os.environ.items() if not key.startswith("IMAGEGW_")}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([IMAGEGW, "doctor", "--config", str(config_file), *args], cwd=root,
                          env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)


def lines(done: subprocess.CompletedProcess[str], status: str) -> list[str]:
    return [line for line in done.stdout.splitlines() if line.startswith(f"{status} ")]


def test_healthy_site_passes_every_check(
    root: Path, munge_socket: str, sshd_target: SshdServer,
    redis_server: RedisServer,
) -> None:
    config = local_config(root, Broker=redis_server.url)
    config["Platforms"]["cluster"]["mungeSocketPath"] = munge_socket
    config["Platforms"]["remote"] = remote_system(sshd_target, sshd_target.known_hosts)
    done = doctor(root, config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert lines(done, "FAIL") == []
    shown = done.stdout
    for tool in SQUASHFS_TOOLS:
        assert f"OK   tool {tool}: " in shown
    assert f"OK   MUNGE {munge_socket} (systems cluster): munged answers" in shown
    assert f"OK   SSH remote: {sshd_target.user}@{sshd_target.host}:{sshd_target.port}: host key known" \
        in shown
    assert "OK   ListenAddress: 127.0.0.1:7777: loopback only" in shown
    assert f"OK   Platforms.cluster.local.imageDir: {root / 'images'} writable by root, on " in shown
    # Redis answers, but without a password Shifter's guide is not followed: a warning only.
    assert f"WARN Redis {redis_server.url}: PING answered" in shown
    assert "requirepass" in shown


def test_tool_off_path_fails_and_names_the_package(root: Path) -> None:
    tools = root / "bin"
    tools.mkdir()
    for tool in ("stat", "unsquashfs", "sqfs2tar", "rdsquashfs"):
        found = shutil.which(tool)
        assert found, f"{tool} is not installed"
        (tools / tool).symlink_to(found)
    done = doctor(root, local_config(root), path=str(tools))
    assert done.returncode == 1, done.stdout + done.stderr
    assert lines(done, "FAIL") == [
        "FAIL tool tar2sqfs: not on PATH (needed for every conversion); fix: install the Debian "
        "package squashfs-tools-ng, or add its directory to the service's PATH"]
    # With gzipEngine "auto" the missing shim is only slower, so a warning.
    assert any(line.startswith("WARN gzip engine: the libdeflate shim is not usable")
               for line in lines(done, "WARN"))


def test_image_directory_the_service_account_cannot_write_fails(root: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    config = local_config(root)
    for name in ("data", "cache", "expand"):
        os.chown(root / name, nobody.pw_uid, nobody.pw_gid)
    (root / "images").chmod(0o755)  # root's: others may read, not write
    done = doctor(root, config, "--user", "nobody")
    assert done.returncode == 1, done.stdout + done.stderr
    assert lines(done, "FAIL") == [
        f"FAIL Platforms.cluster.local.imageDir: {root / 'images'} is not writable by nobody "
        f"(owner root, mode 0755); fix: chown nobody {root / 'images'} (or run the service as "
        "its owner)"]
    assert f"OK   CacheDirectory: {root / 'cache'} writable by nobody" in done.stdout


def test_dead_munge_socket_fails(root: Path, munge_daemon: MungeDaemon) -> None:
    munge_daemon.kill()  # the socket file stays behind, nothing answers on it
    assert Path(munge_daemon.socket).exists()
    config = local_config(root)
    config["Platforms"]["cluster"]["mungeSocketPath"] = munge_daemon.socket
    done = doctor(root, config)
    assert done.returncode == 1, done.stdout + done.stderr
    [failed] = lines(done, "FAIL")
    assert failed.startswith(f"FAIL MUNGE {munge_daemon.socket} (systems cluster): no credential "
                             f"round trip: cannot check credentials: the MUNGE daemon at "
                             f"{munge_daemon.socket} is not answering")
    assert failed.endswith("fix: check that munged is running and that mungeSocketPath points "
                           "to its socket")


def test_unknown_ssh_host_key_fails_and_is_not_added(
    root: Path, sshd_target: SshdServer,
) -> None:
    empty = root / "known_hosts"
    empty.write_text("")
    config = local_config(root)
    config["Platforms"]["remote"] = remote_system(sshd_target, empty)
    done = doctor(root, config)
    assert done.returncode == 1, done.stdout + done.stderr
    where = f"{sshd_target.user}@{sshd_target.host}:{sshd_target.port}"
    assert lines(done, "FAIL") == [
        f"FAIL SSH remote: {where}: refusing {where}: its ssh-ed25519 host key is not in {empty}; "
        f"fix: check the host's key, then add it (ssh-keyscan -p {sshd_target.port} {sshd_target.host})"]
    assert empty.read_text() == "", "doctor never adds a host key"


def test_dead_redis_port_fails(root: Path) -> None:
    broker = f"redis://{refused_address()}/0"
    done = doctor(root, local_config(root, Broker=broker))
    assert done.returncode == 1, done.stdout + done.stderr
    [failed] = lines(done, "FAIL")
    assert failed.startswith(f"FAIL Redis {broker}: no answer to PING: ")
    assert failed.endswith("fix: start redis-server, or fix Broker (redis://[:PASSWORD@]HOST:PORT/DB)")


def test_dead_mongodb_port_fails(root: Path) -> None:
    uri = f"mongodb://{refused_address()}/"
    done = doctor(root, local_config(root, MongoDBURI=uri), "--role", "gateway")
    assert done.returncode == 1, done.stdout + done.stderr
    [failed] = lines(done, "FAIL")
    assert failed.startswith(f"FAIL MongoDB {uri}: no answer to ping: ")
    assert "tool tar2sqfs" not in done.stdout, "a gateway host needs no conversion tools"


def test_listen_address_open_to_other_hosts_without_tls_fails(root: Path) -> None:
    done = doctor(root, local_config(root, ListenAddress="0.0.0.0:7777"), "--role", "gateway")
    assert done.returncode == 1, done.stdout + done.stderr
    assert lines(done, "FAIL") == [
        "FAIL ListenAddress: ListenAddress 0.0.0.0:7777 is reachable from other hosts, but the "
        "gateway has no TLS (TLSCertificate and TLSKey) and no authentication (mungeSocketPath "
        "on cluster); fix: configure them, listen on 127.0.0.1, or set AllowInsecureListen: true"]
    assert "OK   tool unsquashfs: " in done.stdout, "a gateway checks imports with unsquashfs"


def test_remote_system_without_the_openssh_client_fails(
    root: Path, sshd_target: SshdServer
) -> None:
    tools = root / "bin"
    tools.mkdir()
    config = local_config(root)
    config["Platforms"]["remote"] = remote_system(sshd_target, sshd_target.known_hosts)
    done = doctor(root, config, path=str(tools))
    assert "FAIL OpenSSH client (systems remote): ssh is not installed: remote systems' images " \
        "are published with it; fix: install openssh-client" in lines(done, "FAIL")


def test_an_ssh_key_others_may_read_fails(root: Path, sshd_target: SshdServer) -> None:
    key = root / "id_ed25519"
    key.write_bytes(sshd_target.ed25519_key.read_bytes())
    key.chmod(0o640)
    config = local_config(root)
    config["Platforms"]["remote"] = remote_system(sshd_target, sshd_target.known_hosts)
    config["Platforms"]["remote"]["ssh"]["key"] = str(key)
    done = doctor(root, config)
    assert f"FAIL SSH remote: key {key}: others may read it, and ssh refuses such a key; " \
        f"fix: chmod 600 {key} (owned by the service account)" in lines(done, "FAIL")
