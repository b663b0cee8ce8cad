"""The remote-publish rows: one image file published to a real sshd on loopback.

Takes turns, in one run and on one sshd: OpenSSH `scp` of the file (its defaults, as a
person would copy it), imagegw's publisher (the system's ssh client fed by sendfile, the
copy checked against the local file by `cksum` on both ends, fsync, rename) and the
paramiko publisher it replaces. Each runs as its own process (a Python process importing
imagegw takes ~0.2 s of its wall time; scp's start is in its row too).

The remote pull rows also say what the copy costs: the CPU seconds of everything on the
sshd side (a cpuacct cgroup holding the sshd and its sessions, where the machine lets
us make one), the service tree's CPU over the local pull's (ssh and cksum are its
children), and the machine's idle core-seconds during each pull (on loopback both ends
share the cores the conversion uses).

scp never waits for the disk; a publish does (the image is on disk before it is named),
so where the disk writes slower than the link the two differ by the disk, not the copy.
A fourth row says how much: scp, then `sync` of the copy on the remote host (a second ssh
session, ~0.2 s of its time). The target stays against scp alone.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.measure import Sample, run

MIB = 1024 * 1024

_PUBLISH = """
import sys, time
from pathlib import Path
from imagegw.domain.config import SshTarget
from imagegw.publish.openssh import OpenSshPublisher
from imagegw.publish.ssh import SshPublisher
kind, source, user, key, image_dir, port, known_hosts, timing = sys.argv[1:]
target = SshTarget(username=user, key=key, image_dir=image_dir, hosts=("127.0.0.1",),
                   port=int(port), known_hosts=known_hosts)
publisher = OpenSshPublisher(target) if kind == "openssh" else SshPublisher(target)
start = time.perf_counter()
publisher.publish(Path(source), f"{kind}.squashfs", b"FORMAT: squashfs\\n", f"{kind}.meta")
Path(timing).write_text(f"{time.perf_counter() - start:.3f}")
"""


def test_file(workdir: Path, size: int) -> Path:
    """An incompressible file of `size` bytes (reused between runs)."""
    path = workdir / f"remote-publish-{size}.bin"
    if path.exists() and path.stat().st_size == size:
        return path
    block = os.urandom(8 * MIB)
    with open(path, "wb") as out:
        for start in range(0, size, len(block)):
            out.write(block[:size - start])
    return path


def measure_remote_publish(workdir: Path, size: int, repeat: int) -> tuple[list[Sample], str]:
    """(median rows: scp, ours, paramiko) and the one-line summary with the ratio to scp."""
    from testbed.sshd import start_sshd

    source = test_file(workdir, size)
    server_dir = Path(tempfile.mkdtemp(prefix="sshd-", dir=workdir))
    try:
        server = start_sshd(server_dir)
    except BaseException:
        shutil.rmtree(server_dir, ignore_errors=True)
        raise
    try:
        common = (f"-F /dev/null -i {shlex.quote(str(server.ed25519_key))} "
                  f"-o UserKnownHostsFile={shlex.quote(str(server.known_hosts))} "
                  "-o StrictHostKeyChecking=yes -o BatchMode=yes")
        scp = (f"scp -q -P {server.port} {common} {shlex.quote(str(source))} "
               f"{server.user}@127.0.0.1:{shlex.quote(str(server.image_dir))}/scp.bin")
        copy = shlex.quote(f"{server.image_dir}/scp.bin")
        scp_synced = (f"{scp} && ssh -p {server.port} {common} {server.user}@127.0.0.1 "
                      f"{shlex.quote(f'sync -- {copy}')}")

        timing = server_dir / "publish-call.s"

        def publish(kind: str) -> str:
            words = [sys.executable, "-c", _PUBLISH, kind, str(source), server.user,
                     str(server.ed25519_key), str(server.image_dir), str(server.port),
                     str(server.known_hosts), str(timing)]
            return " ".join(shlex.quote(word) for word in words)

        def measured(label: str, kind: str) -> Sample:
            """The whole process, noting the publish call alone (no interpreter start)."""
            sample = run(label, publish(kind))
            if sample.ok:
                sample.note = f"the publish call {float(timing.read_text()):.2f}s"
            return sample

        def afresh(sample: Callable[[], Sample]) -> Sample:
            """Each copies to a directory without the copies made before: a publish never
            replaces an image (its name is a content id), and a temporary written beside
            the last round's 1 GiB copy needs a new 1 GiB of page cache where scp,
            truncating its own copy, reuses the pages it frees (on this VM memory
            written for the first time costs ~8× more, docs/performance.md). Nor is a
            dirty page of the one before written back during the next one's sync."""
            for entry in server.image_dir.iterdir():
                entry.unlink()
            os.sync()
            return sample()

        rounds: dict[str, list[Sample]] = {"scp": [], "openssh": [], "paramiko": [],
                                           "scp+sync": []}
        for _ in range(repeat):
            rounds["scp"].append(afresh(lambda: run(
                "OpenSSH scp of the same file (its defaults)", scp)))
            rounds["scp+sync"].append(afresh(lambda: run(
                "OpenSSH scp, then sync of the copy on the remote host (a publish's "
                "durability)", scp_synced)))
            rounds["openssh"].append(afresh(lambda: measured(
                "imagegw: remote publish (OpenSSH client, cksum-checked copy, fsync, rename)",
                "openssh")))
            rounds["paramiko"].append(afresh(lambda: measured(
                "imagegw before: paramiko SFTP, then a remote sha256sum pass, rename",
                "paramiko")))
    finally:
        server.stop()
        shutil.rmtree(server_dir, ignore_errors=True)
    rows = [_median(samples) for samples in rounds.values()]
    scp_row, ours, before, synced = rows
    for row in rows:
        if row.ok:
            row.note = (f"{size / row.wall / 1e6:.0f} MB/s" + (f"; {row.note}" if row.note
                                                              else ""))
    ratio = scp_row.wall / ours.wall if ours.ok and ours.wall else float("nan")
    synced_ratio = synced.wall / ours.wall if ours.ok and ours.wall and synced.ok \
        else float("nan")
    turns = "; ".join(f"{name} " + ", ".join(f"{s.wall:.1f}" for s in samples)
                      for name, samples in rounds.items())
    pairs = sorted(theirs.wall / mine.wall for theirs, mine in
                   zip(rounds["scp"], rounds["openssh"], strict=True) if theirs.ok and mine.ok)
    summary = (f"remote publish of {size / 1e6:.0f} MB over loopback ssh: "
               f"{ours.wall:.1f}s, {ratio:.2f}× scp's speed ({scp_row.wall:.1f}s) "
               f"[target ≥ 0.9]; {synced_ratio:.2f}× the speed of scp then a "
               f"remote sync ({synced.wall:.1f}s); paramiko before: {before.wall:.1f}s "
               f"({repeat} runs each, median; {turns} s; scp's time over ours run by run, "
               f"sorted: {', '.join(f'{pair:.2f}' for pair in pairs)})")
    return rows, summary


class CpuGroup:
    """A cgroup-v1 cpuacct group counting the CPU of a process and all it starts; `usage`
    is None where no group can be made (no cgroup v1 cpuacct, not root)."""

    ROOT = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self, name: str, pid: int) -> None:
        self.path: Path | None = self.ROOT / f"{name}-{os.getpid()}"
        try:
            self.path.mkdir()
            (self.path / "cgroup.procs").write_text(f"{pid}\n")
        except OSError:
            self.close()
            self.path = None

    def usage(self) -> float | None:
        """CPU seconds used so far by the processes in the group (those that ended too)."""
        if self.path is None:
            return None
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def close(self) -> None:
        if self.path is None:
            return
        try:
            for pid in (self.path / "cgroup.procs").read_text().split():
                (self.ROOT / "cgroup.procs").write_text(f"{pid}\n")
            self.path.rmdir()
        except OSError:
            pass


def idle_core_seconds() -> float:
    """Core-seconds the whole machine has been idle (or waiting for I/O) since boot."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    return (fields[3] + fields[4]) / os.sysconf("SC_CLK_TCK")


def _median(samples: list[Sample]) -> Sample:
    """The run with the median wall time (the lower one of the middle two)."""
    ordered = sorted(samples, key=lambda sample: (not sample.ok, sample.wall))
    return ordered[(len(ordered) - 1) // 2]


def measure_remote_pull(workdir: Path, registry, image_name: str, reference: str, jobs: int,
                        engine: str, repeat: int,
                        warm: Callable[[], None] = lambda: None) -> tuple[list[Sample], str]:
    """Cold pulls of one image by fresh `imagegw serve`s, taking turns: to a local system
    (the conversion alone) and to a remote one over a loopback sshd (the copy overlapped
    with the conversion: publish/follow.py); `warm` is called before each."""
    from bench.__main__ import Ours
    from testbed.sshd import start_sshd

    server_dir = Path(tempfile.mkdtemp(prefix="sshd-pull-", dir=workdir))
    try:
        server = start_sshd(server_dir)
    except BaseException:
        shutil.rmtree(server_dir, ignore_errors=True)
        raise
    remote = {"accesstype": "remote", "host": [f"127.0.0.1:{server.port}"],
              "mungeSocketPath": "/nonexistent/munge.socket", "allowAnonymousPull": True,
              "ssh": {"username": server.user, "key": str(server.ed25519_key),
                      "imageDir": str(server.image_dir), "knownHosts": str(server.known_hosts)}}
    rounds: dict[str, list[Sample]] = {"local": [], "remote": []}
    group = CpuGroup("imagegw-bench-sshd", server.process.pid)
    try:
        for _ in range(repeat):
            for system, label in (("default", "imagegw: cold pull → local system "
                                              "(the conversion alone)"),
                                  ("remote", "imagegw: cold pull → remote system over ssh "
                                             "(streamed while converting)")):
                ours = Ours(workdir, registry, f"{image_name}-{system}", jobs, engine,
                            platforms={"remote": remote})
                try:
                    warm()
                    remote_before, idle_before = group.usage(), idle_core_seconds()
                    sample = ours.measured_pull(label, reference, system)
                    remote_after, idle_after = group.usage(), idle_core_seconds()
                finally:
                    ours.stop()
                sample.idle = idle_after - idle_before  # type: ignore[attr-defined]
                remote_cpu = None if remote_before is None or remote_after is None \
                    else remote_after - remote_before
                sample.remote_cpu = remote_cpu  # type: ignore[attr-defined]
                rounds["local" if system == "default" else "remote"].append(sample)
                for entry in server.image_dir.iterdir():
                    entry.unlink()
    finally:
        server.stop()
        group.close()
        shutil.rmtree(server_dir, ignore_errors=True)
    local, far = (_median(samples) for samples in rounds.values())
    for row in (local, far):
        sshd = getattr(row, "remote_cpu", None)
        row.note += (f"; machine idle {getattr(row, 'idle', 0.0):.2f} core-s"
                     + (f"; sshd side {sshd:.2f} CPU-s" if sshd else ""))
    ratio = far.wall / local.wall if local.ok and far.ok and local.wall else float("nan")
    turns = "; ".join(f"{name} " + ", ".join(f"{s.wall:.1f}" for s in samples)
                      for name, samples in rounds.items())
    pairs = sorted(there.wall / here.wall for here, there in
                   zip(rounds["local"], rounds["remote"], strict=True) if here.ok and there.ok)
    def cpu_s(samples: list[Sample], kind: str) -> str:
        return ", ".join("–" if getattr(s, kind, None) is None else f"{getattr(s, kind):.2f}"
                         for s in samples)

    copy = [there.cpu - here.cpu + (getattr(there, "remote_cpu", None) or 0.0)
            for here, there in zip(rounds["local"], rounds["remote"], strict=True)
            if here.ok and there.ok]
    summary = (f"{image_name}: remote pull {far.wall:.1f}s = {ratio:.2f}× the same cold pull "
               f"to a local system ({local.wall:.1f}s) [target ≤ 1.1] ({turns} s; remote over "
               f"local run by run, sorted: {', '.join(f'{pair:.2f}' for pair in pairs)}). "
               f"What the copy costs, run by run: the service tree's CPU over the local "
               f"pull's plus the sshd side's "
               f"{', '.join(f'{cost:.2f}' for cost in copy)} CPU-s (sshd side "
               f"{cpu_s(rounds['remote'], 'remote_cpu')}); machine idle core-s: local "
               f"{cpu_s(rounds['local'], 'idle')}, remote {cpu_s(rounds['remote'], 'idle')}")
    return [local, far], summary
