"""Real MUNGE daemons for tests: each with its own key, socket and files in a temp dir.

Fixtures `munge_socket`, `other_munge_socket` (module scope, different keys) and `munge_daemon`
(one test), registered for every test by tests/conftest.py; `make_credential` runs `munge`, as
another user if asked.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
COMMAND_TIMEOUT = 10.0


@dataclass
class MungeDaemon:
    """A munged we started; `socket` is what clients and decoders point at."""

    root: Path
    socket: str
    pid: int

    def running(self) -> bool:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        # A zombie waiting for init to reap it is already gone for our purposes.
        return stat.rpartition(")")[2].split()[0] != "Z"

    def stop(self) -> None:
        """Stops the daemon the way an operator would (it removes its socket); ~1.5 s."""
        self._signal(signal.SIGTERM)
        if self.running():
            self._signal(signal.SIGKILL)

    def kill(self) -> None:
        """Ends the daemon at once; its socket file stays behind."""
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if not self.running():
            return
        os.kill(self.pid, signum)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.01)


def start_munged() -> MungeDaemon:
    """Starts munged with a fresh key; fails the test if it does not come up."""
    for tool in ("munged", "mungekey", "munge"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (Debian package: munge)")
    # munged insists every directory above its socket is o+x; pytest's tmp dirs are 0700.
    root = Path(tempfile.mkdtemp(prefix="imagegw-munge-", dir="/tmp"))
    try:
        return _start_in(root)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def _start_in(root: Path) -> MungeDaemon:
    root.chmod(0o755)
    etc = root / "etc"
    etc.mkdir(mode=0o700)
    key = etc / "munge.key"
    _run(["mungekey", "--create", f"--keyfile={key}"])
    socket = root / "munge.sock"
    pid_file = root / "munged.pid"
    _run([
        "munged", f"--socket={socket}", f"--key-file={key}",
        f"--log-file={root / 'munged.log'}", f"--pid-file={pid_file}",
        f"--seed-file={root / 'munged.seed'}",
    ], root=root)
    deadline = time.monotonic() + START_TIMEOUT
    while not _ready(socket, pid_file) and time.monotonic() < deadline:
        time.sleep(0.02)
    if not _ready(socket, pid_file):
        pytest.fail(f"munged did not start on {socket} within {START_TIMEOUT}s\n{_log_text(root)}")
    return MungeDaemon(root=root, socket=str(socket), pid=int(pid_file.read_text().strip()))


def _ready(socket: Path, pid_file: Path) -> bool:
    try:
        return socket.exists() and pid_file.read_text().strip().isdigit()
    except OSError:
        return False


def _run(command: list[str], *, root: Path | None = None) -> None:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if result.returncode != 0:
        log = _log_text(root) if root is not None else ""
        pytest.fail(f"{command[0]} failed ({result.returncode}): {result.stderr.strip()}\n{log}")


def _log_text(root: Path) -> str:
    try:
        return (root / "munged.log").read_text(errors="replace")
    except OSError:
        return ""


@contextmanager
def running_munged() -> Iterator[MungeDaemon]:
    """A munged for the length of the block; stopped and its files removed afterwards."""
    daemon = start_munged()
    try:
        yield daemon
    finally:
        daemon.kill()  # its directory goes next, so a graceful stop buys nothing
        shutil.rmtree(daemon.root, ignore_errors=True)


@pytest.fixture(scope="module", name="munge_socket")
def munge_socket_fixture() -> Iterator[str]:
    """The socket of a running munged with its own key."""
    with running_munged() as daemon:
        yield daemon.socket


@pytest.fixture(scope="module", name="other_munge_socket")
def other_munge_socket_fixture() -> Iterator[str]:
    """The socket of a second munged whose key differs from `munge_socket`'s."""
    with running_munged() as daemon:
        yield daemon.socket


@pytest.fixture(name="munge_daemon")
def munge_daemon_fixture() -> Iterator[MungeDaemon]:
    """A munged for one test, which the test may stop."""
    with running_munged() as daemon:
        yield daemon


def make_credential(
    socket: str, *, as_user: str | None = None, ttl: int | None = None, payload: bytes = b""
) -> str:
    """A fresh credential from the `munge` command, made as `as_user` when given."""
    command = ["munge", "-S", socket]
    if ttl is not None:
        command += ["-t", str(ttl)]
    if not payload:
        command.append("-n")
    if as_user is not None:
        command = ["runuser", "-u", as_user, "--", *command]
    result = subprocess.run(
        command, input=payload, capture_output=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"munge failed ({result.returncode}): {result.stderr.decode().strip()}")
    return result.stdout.decode("ascii").strip()
