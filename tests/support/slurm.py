"""A real single-node Slurm 22.05 for tests, and the builds of the C++ client and SPANK plugin.

`running_slurm(workdir, plugin, plugin_args)` runs a private munged, slurmctld and slurmd on free
loopback ports with slurm.conf and plugstack.conf under `workdir`, and fails with the daemons'
logs unless the node turns idle. `build_cpp_client()` / `build_spank_plugin()` run make.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.munge import running_munged

ROOT = Path(__file__).resolve().parents[2]
CPP_CLIENT_DIR = ROOT / "clients" / "cpp"
SLURM_PLUGIN_DIR = ROOT / "clients" / "slurm"
CPP_CLI = CPP_CLIENT_DIR / "build" / "imagegw-cpp"
SPANK_PLUGIN = SLURM_PLUGIN_DIR / "build" / "imagegw_spank.so"

SLURM_PACKAGES = ("slurm-wlm", "libslurm-dev")
INSTALL_TIMEOUT = 900.0
BUILD_TIMEOUT = 600.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
COMMAND_TIMEOUT = 60.0


def _run_checked(command: list[str], *, timeout: float, what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        pytest.fail(f"{what} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-3000:]}")


def ensure_slurm_installed() -> None:
    """Installs Debian's Slurm and its headers when missing (CI must install them up front)."""
    if shutil.which("slurmctld") and Path("/usr/include/slurm/spank.h").exists():
        return
    _run_checked(
        ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y",
         "--no-install-recommends", *SLURM_PACKAGES],
        timeout=INSTALL_TIMEOUT, what="apt-get install " + " ".join(SLURM_PACKAGES),
    )


def build_cpp_client() -> Path:
    """Builds libimagegw_client.a and imagegw-cpp (incrementally); returns the CLI's path."""
    _run_checked(["make", "-C", str(CPP_CLIENT_DIR), "-j4"], timeout=BUILD_TIMEOUT,
                 what="make -C clients/cpp")
    return CPP_CLI


def build_spank_plugin() -> Path:
    """Builds imagegw_spank.so (and the client library it links); returns its path."""
    ensure_slurm_installed()
    _run_checked(["make", "-C", str(SLURM_PLUGIN_DIR), "-j4"], timeout=BUILD_TIMEOUT,
                 what="make -C clients/slurm")
    return SPANK_PLUGIN


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SlurmCluster:
    """A running single-node cluster; `env` points Slurm's commands at its slurm.conf."""

    root: Path
    conf: Path
    plugstack: Path
    plugin: Path
    munge_socket: str
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def run(self, command: list[str], *, timeout: float = COMMAND_TIMEOUT,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Runs a Slurm command (srun, sbatch, sinfo...) against this cluster."""
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False, env={**self.env, **(env or {})}, cwd=self.root)

    def set_plugin_args(self, args: dict[str, str]) -> None:
        """Rewrites plugstack.conf; srun and sbatch read it afresh on every call."""
        self.plugstack.write_text(_plugstack_line(self.plugin, args))

    def wait_for_job(self, job_id: str, timeout: float = COMMAND_TIMEOUT) -> None:
        """Waits until a batch job has left the queue."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queue = self.run(["squeue", "-h", "-j", job_id, "-o", "%T"])
            if queue.returncode != 0 or not queue.stdout.strip():
                return
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still queued after {timeout}s\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / name
            text = path.read_text(errors="replace")[-4000:] if path.exists() else "(none)"
            parts.append(f"--- {name}\n{text}")
        return "\n".join(parts)

    def stop(self) -> None:
        if any(process.poll() is None for process in self.processes.values()):
            self.run(["scontrol", "shutdown"], timeout=STOP_TIMEOUT)
        for process in self.processes.values():
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)


def _plugstack_line(plugin: Path, args: dict[str, str]) -> str:
    arguments = " ".join(f"{key}={value}" for key, value in args.items())
    return f"required {plugin} {arguments}\n"


def _slurm_conf(root: Path, munge_socket: str, plugstack: Path, prolog: Path | None) -> str:
    return "\n".join([
        *([f"Prolog={prolog}"] if prolog else []),
        "ClusterName=imagegw-test",
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        f"AuthInfo=socket={munge_socket}",
        "CredType=cred/munge",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SchedulerType=sched/builtin",
        "SelectType=select/cons_tres",
        "ReturnToService=2",
        "MailProg=/bin/true",
        f"PlugStackConfig={plugstack}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 State=UNKNOWN",
        "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def _start_daemon(cluster: SlurmCluster, name: str, args: list[str]) -> None:
    log = open(cluster.root / f"{name}.out", "wb")  # noqa: SIM115 - handed to the child
    with log:
        cluster.processes[name] = subprocess.Popen(
            [name, "-D", "-f", str(cluster.conf), *args], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=cluster.env, cwd=cluster.root,
        )


def _wait_idle(cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    state = ""
    while time.monotonic() < deadline:
        for name, process in cluster.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}\n{cluster.logs()}")
        result = cluster.run(["sinfo", "-h", "-N", "-o", "%t"], timeout=10)
        state = result.stdout.strip()
        if result.returncode == 0 and state == "idle":
            return
        time.sleep(0.2)
    raise RuntimeError(f"the Slurm node is not idle after {START_TIMEOUT}s "
                       f"(sinfo says {state!r})\n{cluster.logs()}")


def start_slurm(workdir: Path, plugin: Path, plugin_args: dict[str, str],
                munge_socket: str, prolog: Path | None = None) -> SlurmCluster:
    """Starts slurmctld and slurmd with `plugin` in plugstack.conf; raises with logs on failure.

    `prolog`, when given, is the job prolog slurmd runs (as root) before each job.
    """
    ensure_slurm_installed()
    root = workdir
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    plugstack = root / "plugstack.conf"
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, munge_socket, plugstack, prolog))
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env["SLURM_CONF"] = str(conf)
    cluster = SlurmCluster(root=root, conf=conf, plugstack=plugstack, plugin=plugin,
                           munge_socket=munge_socket, env=env)
    cluster.set_plugin_args(plugin_args)
    try:
        _start_daemon(cluster, "slurmctld", ["-i"])
        _start_daemon(cluster, "slurmd", ["-N", "localhost"])
        _wait_idle(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextmanager
def running_slurm(
    workdir: Path, plugin: Path, plugin_args: dict[str, str], munge_socket: str | None = None,
    prolog: Path | None = None,
) -> Iterator[SlurmCluster]:
    """A cluster for the length of the block, shut down afterwards.

    Slurm authenticates through `munge_socket` when given (so a gateway can share that
    munged), else through a private munged started and removed here.
    """
    with ExitStack() as stack:
        if munge_socket is None:
            munge_socket = stack.enter_context(running_munged()).socket
        cluster = start_slurm(workdir, plugin, plugin_args, munge_socket=munge_socket,
                              prolog=prolog)
        stack.callback(cluster.stop)
        yield cluster
