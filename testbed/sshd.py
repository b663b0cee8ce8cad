"""A real OpenSSH sshd on 127.0.0.1 and a free high port, for remote-publish tests.

Owns the test account, a per-server authorized_keys file and image directory in its
home, the host key, a known_hosts file for clients and the server process.
The tests use it through the `sshd_target` fixture (tests/support/sshd.py); bench/ starts
one for its remote-publish rows.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from imagegw.domain.config import SshTarget

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
USER = "imagegwtest"
START_TIMEOUT = 10.0


@dataclass
class SshdServer:
    """One running sshd; `stop()` ends it by pid and removes what it created."""

    host: str
    port: int
    user: str
    ed25519_key: Path
    rsa_key: Path
    host_public_key: str
    known_hosts: Path
    image_dir: Path
    log: Path
    process: subprocess.Popen[bytes]
    _owned: list[Path] = field(default_factory=list)

    def target(self, **changes: object) -> SshTarget:
        """An SshTarget for this server (ed25519 key), with `changes` applied."""
        values: dict[str, object] = {
            "username": self.user,
            "key": str(self.ed25519_key),
            "image_dir": str(self.image_dir),
            "hosts": (self.host,),
            "port": self.port,
            "known_hosts": str(self.known_hosts),
            "connect_timeout": 5.0,
        }
        values.update(changes)
        return SshTarget(**values)  # type: ignore[arg-type]

    def session_pids(self) -> list[int]:
        """The processes serving open connections (all descendants of the listener)."""
        found: list[int] = []
        parents = [self.process.pid]
        while parents:
            parent = parents.pop()
            try:
                children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
            except OSError:
                continue
            found.extend(int(child) for child in children)
            parents.extend(int(child) for child in children)
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        for path in self._owned:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def start_sshd(workdir: Path) -> SshdServer:
    """Starts sshd for the test account; raises RuntimeError (with the log) if it fails."""
    if os.geteuid() != 0:
        raise RuntimeError("the sshd test server needs root (to add the test account)")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    os.chmod("/run/sshd", 0o755)
    account = _ensure_account(USER)
    token = secrets.token_hex(4)
    ssh_dir = _owned_directory(Path(account.pw_dir) / ".ssh", account, 0o700)

    ed25519_key = _keygen(workdir / "id_ed25519", "ed25519")
    rsa_key = _keygen(workdir / "id_rsa", "rsa", "-b", "3072")
    host_key = _keygen(workdir / "host_ed25519", "ed25519")
    authorized = ssh_dir / f"authorized_keys.imagegw-{token}"
    authorized.write_text(
        Path(f"{ed25519_key}.pub").read_text() + Path(f"{rsa_key}.pub").read_text()
    )
    os.chown(authorized, account.pw_uid, account.pw_gid)
    os.chmod(authorized, 0o600)
    image_dir = _owned_directory(Path(account.pw_dir) / f"images-{token}", account, 0o755)
    owned = [authorized, image_dir]

    log = workdir / "sshd.log"
    started = False
    for _attempt in range(3):  # another process may take the probed port first
        port = _free_port()
        config = _write_config(workdir, port, host_key, authorized.name)
        process = subprocess.Popen(
            [SSHD, "-D", "-f", str(config), "-E", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        started = _wait_for_banner(process, port)
        if started:
            break
        if process.poll() is None:
            process.kill()
        process.wait(timeout=5)
        if "Address already in use" not in _read(log):
            break
    if not started:
        for path in owned:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise RuntimeError(f"sshd did not start; its log {log}:\n{_read(log)}")

    host_public_key = " ".join(Path(f"{host_key}.pub").read_text().split()[:2])
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_public_key}\n")
    return SshdServer(
        host="127.0.0.1", port=port, user=USER, ed25519_key=ed25519_key, rsa_key=rsa_key,
        host_public_key=host_public_key, known_hosts=known_hosts, image_dir=image_dir,
        log=log, process=process, _owned=owned,
    )


def _ensure_account(user: str) -> pwd.struct_passwd:
    try:
        pwd.getpwnam(user)
    except KeyError:
        result = subprocess.run(
            ["useradd", "-m", "-s", "/bin/sh", user], capture_output=True, text=True, timeout=30
        )
        if result.returncode not in (0, 9):  # 9: made meanwhile by another test run
            raise RuntimeError(f"useradd {user} failed: {result.stderr.strip()}") from None
    # A locked account ("!" password) refuses key logins too; "*" only refuses passwords.
    subprocess.run(["usermod", "-p", "*", user], check=True, capture_output=True, timeout=30)
    return pwd.getpwnam(user)


def _owned_directory(path: Path, account: pwd.struct_passwd, mode: int) -> Path:
    path.mkdir(mode=mode, exist_ok=True)
    os.chown(path, account.pw_uid, account.pw_gid)
    os.chmod(path, mode)
    return path


def _keygen(path: Path, kind: str, *extra: str) -> Path:
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", kind, *extra, "-N", "", "-C", f"imagegw-test-{kind}",
         "-f", str(path)],
        check=True, capture_output=True, timeout=60,
    )
    return path


def _write_config(workdir: Path, port: int, host_key: Path, authorized_name: str) -> Path:
    config = workdir / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {host_key}\n"
        f"PidFile {workdir / 'sshd.pid'}\n"
        "UsePAM no\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\n"
        "AuthenticationMethods publickey\n"
        f"AllowUsers {USER}\n"
        f"AuthorizedKeysFile .ssh/{authorized_name}\n"
        "StrictModes yes\n"
        "Subsystem sftp internal-sftp\n"
        "LogLevel VERBOSE\n"
    )
    return config


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_banner(process: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
                conn.settimeout(2.0)
                if conn.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return "(no log)"
