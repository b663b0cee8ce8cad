"""`python -m bench.timeline --image large-files`: where one cold pull's time goes.

Pulls one benchmark image cold through a fresh `imagegw serve` (the images, the registry
and the settings of `python -m bench`) and prints, on one clock from the PullImage call:
the service's log lines and the progress stream, when tar2sqfs starts and ends, then the
CPU seconds of each thread of the service, of tar2sqfs and of the registry, and every
half second how many cores the service, tar2sqfs and the whole machine used (a phase in
which the machine is not busy is a serial phase). `--remote` pulls for a system published
over SSH to a loopback sshd instead (publish/follow.py streams the image while it is
built) and adds the CPU seconds of each process on the sshd side (sshd, the remote
script's `dd`, `cksum`...). The per-thread figures read
/proc/<pid>/task; `--py-spy FILE` also records the service's stacks (py-spy installed in
the virtualenv; not a dependency). Timings on a shared machine drift: look at the
machine's column before trusting a run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import images as bench_images  # noqa: E402
from bench.__main__ import BLOCK, LEVEL  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
SAMPLE = 0.02
BUCKET = 0.5
_LOG_LINE = re.compile(r"(\d+-\d+-\d+ \d+:\d+:\d+),(\d+) (\w+) (\S+) (.*)")
_NOISE = ("cygrpc", "urllib3.util.retry", "asyncio")


def _stat(path: Path) -> tuple[float, float]:
    """(user, system) CPU seconds from a /proc stat file; zeros when it is gone."""
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0, 0.0
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def _cpu(pid: int) -> float:
    return sum(_stat(Path(f"/proc/{pid}/stat")))


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (not idle, not waiting for I/O)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


class Watcher(threading.Thread):
    """Samples the service's threads, its children and the machine every SAMPLE s."""

    def __init__(self, pid: int, start: float, remote_pid: int | None = None) -> None:
        super().__init__(daemon=True)
        self.pid, self.start_time = pid, start
        self.remote_pid = remote_pid
        self.remote: dict[int, list] = {}  # pid -> [name, cpu], the sshd listener's tree
        self.events: list[tuple[float, str]] = []
        self.children: dict[int, list] = {}  # pid -> [name, started, cpu]
        self.threads: dict[str, float] = {}
        self.samples: list[tuple[float, float, float, float]] = []
        self.stopped = threading.Event()
        self._base = self._thread_cpu()
        self._remote_base: dict[int, float] = {}
        if remote_pid is not None:  # the listener itself and any session already open
            self._sample_remote()
            self._remote_base = {pid: cpu for pid, (_, cpu) in self.remote.items()}
            self.remote.clear()

    def _thread_cpu(self) -> dict[str, float]:
        found = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            found[task.name] = sum(_stat(task / "stat"))
        return found

    def run(self) -> None:
        running: set[int] = set()
        while not self.stopped.is_set():
            now = time.perf_counter() - self.start_time
            kids: set[int] = set()
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                try:
                    kids.update(int(p) for p in (task / "children").read_text().split())
                except OSError:
                    continue
            for kid in kids - running:
                name = Path(f"/proc/{kid}/comm").read_text().strip() if Path(
                    f"/proc/{kid}").exists() else "?"
                self.children.setdefault(kid, [name, now, 0.0])
                self.events.append((now, f"child {name} ({kid}) started"))
            for kid in kids:
                self.children[kid][2] = max(self.children[kid][2], _cpu(kid))
            for kid in running - kids:
                name, _, cpu = self.children[kid]
                self.events.append((now, f"child {name} ({kid}) ended, {cpu:.2f} s CPU"))
            running = kids
            if self.remote_pid is not None:
                self._sample_remote()
            for tid, cpu in self._thread_cpu().items():
                self.threads[tid] = max(self.threads.get(tid, 0.0), cpu - self._base.get(tid, 0.0))
            self.samples.append((now, _cpu(self.pid),
                                 sum(cpu for _, _, cpu in self.children.values()),
                                 _machine_busy()))
            time.sleep(SAMPLE)


    def _sample_remote(self) -> None:
        """The CPU of every process under the sshd listener (sessions, their scripts)."""
        parents = [self.remote_pid]
        while parents:
            parent = parents.pop()
            try:
                found = [int(kid) for kid in
                         Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
            except OSError:
                continue
            parents += found
            for kid in found:
                try:
                    name = Path(f"/proc/{kid}/comm").read_text().strip()
                except OSError:
                    continue
                entry = self.remote.setdefault(kid, [name, 0.0])
                entry[0] = name  # sshd forks, then the script execs dd, cksum...
                entry[1] = max(entry[1], _cpu(kid) - self._remote_base.get(kid, 0.0))

    def remote_by_name(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for name, cpu in self.remote.values():
            totals[name] = totals.get(name, 0.0) + cpu
        return totals


def _log_events(log: str, since: float) -> list[tuple[float, str]]:
    events = []
    for line in log.splitlines():
        match = _LOG_LINE.match(line)
        if not match or any(noise in line for noise in _NOISE):
            continue
        stamp = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) \
            + int(match.group(2)) / 1000
        if stamp - since >= -0.5:
            events.append((stamp - since, f"log {match.group(4)} {match.group(5)[:150]}"))
    return events


def _utilisation(samples: list[tuple[float, float, float, float]]) -> list[str]:
    rows, previous = [], None
    for sample in samples:
        if previous is None or sample[0] - previous[0] >= BUCKET:
            if previous is not None:
                span = sample[0] - previous[0]
                service, children, machine = (
                    (sample[i] - previous[i]) / span for i in (1, 2, 3))
                rows.append(f"{previous[0]:5.1f} s: service {service:4.2f} "
                            f"tar2sqfs {children:4.2f} machine {machine:4.2f}")
            previous = sample
    return rows


def pull_once(registry, image, workdir: Path, spy: Path | None, sshd=None,
              storage: Path | None = None) -> float:
    from imagegw.v1 import gateway_service_pb2 as pb
    from imagegw.v1 import gateway_service_pb2_grpc as pb_grpc
    from imagegw.v1 import image_pb2
    from testbed.services import embedded_config, start_service

    shutil.rmtree(workdir, ignore_errors=True)
    config = embedded_config(workdir, registry_url=registry.url)
    system = "default"
    if sshd is not None:
        system = "remote"
        config["Platforms"]["remote"] = {
            "accesstype": "remote", "host": [f"127.0.0.1:{sshd.port}"],
            "mungeSocketPath": "/nonexistent/munge.socket", "allowAnonymousPull": True,
            "ssh": {"username": sshd.user, "key": str(sshd.ed25519_key),
                    "imageDir": str(sshd.image_dir), "knownHosts": str(sshd.known_hosts)}}
    config["ConverterOptions"] = {"compressor": "gzip", "level": LEVEL, "blockSize": BLOCK,
                                  "jobs": os.cpu_count() or 1}
    service = start_service("serve", config, workdir)
    pid = service.process.pid
    recorder = None
    if spy is not None:
        recorder = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-r", "100",
             "-t", "-n", "-f", "raw", "-o", str(spy)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    if storage is not None:  # where the bound's inputs are: bench/__main__.py
        bench_images.warm_registry_blobs(storage, image)
    registry_cpu = _cpu(registry.process.pid)
    service_cpu = _cpu(pid)
    start, since = time.perf_counter(), time.time()
    watcher = Watcher(pid, start, sshd.process.pid if sshd is not None else None)
    watcher.start()
    events: list[tuple[float, str]] = []
    try:
        with service.channel() as channel:
            stub = pb_grpc.GatewayServiceStub(channel)
            request = pb.PullImageRequest(system=system,
                                          reference=f"testreg/bench/{image.name}:1")
            for response in stub.PullImage(request, timeout=3600):
                progress = response.progress
                stage = image_pb2.Stage.Name(progress.stage).removeprefix("STAGE_")
                events.append((time.perf_counter() - start,
                               f"progress {stage} {progress.bytes_done}/{progress.bytes_total} "
                               f"{progress.message}"))
        wall = time.perf_counter() - start
        service_used = _cpu(pid) - service_cpu
    finally:
        watcher.stopped.set()
        watcher.join()
        if recorder is not None:
            recorder.send_signal(2)
            recorder.wait()
        service.stop()
    children = sum(cpu for _, _, cpu in watcher.children.values())
    print(f"== {image.name}: cold pull {wall:.2f} s; CPU s: service {service_used:.2f} "
          f"(threads below), tar2sqfs {children:.2f}, registry "
          f"{_cpu(registry.process.pid) - registry_cpu:.2f}")
    for when, what in sorted(events + watcher.events + _log_events(service.log(), since)):
        print(f"{when:8.3f} {what}")
    busy = sorted(((cpu, tid) for tid, cpu in watcher.threads.items() if cpu >= 0.05),
                  reverse=True)
    print("threads (CPU s):", ", ".join(f"{tid} {cpu:.2f}" for cpu, tid in busy))
    print("children of the service (CPU s):", ", ".join(
        f"{name} {cpu:.2f}" for name, _, cpu in watcher.children.values() if cpu >= 0.01))
    if sshd is not None:
        remote = watcher.remote_by_name()
        print(f"sshd side (CPU s): {sum(remote.values()):.2f}:", ", ".join(
            f"{name} {cpu:.2f}" for name, cpu in sorted(remote.items(), key=lambda x: -x[1])))
        for entry in sshd.image_dir.iterdir():
            entry.unlink()
    print("cores used:")
    for row in _utilisation(watcher.samples):
        print("  " + row)
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.timeline",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="large-files",
                        help="small-files, large-files or many-layers-<N>k")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/imagegw-bench"))
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--py-spy", type=Path, help="also record the service's stacks here")
    parser.add_argument("--remote", action="store_true",
                        help="pull for a system published over SSH to a loopback sshd")
    args = parser.parse_args(argv)
    from testbed.registry import start_registry

    workdir = args.workdir.resolve()
    if args.image.startswith("many-layers-"):
        files = int(args.image.removeprefix("many-layers-").removesuffix("k")) * 1000
        images = [bench_images.build_many_layers_image(workdir, files)]
    else:
        images = bench_images.build_images(workdir, args.scale)
    image = next((i for i in images if i.name == args.image), None)
    if image is None:
        parser.error(f"no benchmark image {args.image}")
    registry_dir = workdir / "registry-timeline"
    shutil.rmtree(registry_dir, ignore_errors=True)
    registry = start_registry(registry_dir)
    sshd, sshd_dir = None, workdir / "sshd-timeline"
    try:
        if args.remote:
            from testbed.sshd import start_sshd

            shutil.rmtree(sshd_dir, ignore_errors=True)
            sshd_dir.mkdir(parents=True)
            sshd = start_sshd(sshd_dir)
        bench_images.push(registry.url, f"bench/{image.name}", "1", image)
        walls = [pull_once(registry, image, workdir / "ours-timeline", args.py_spy, sshd,
                           registry_dir / "storage")
                 for _ in range(args.runs)]
    finally:
        registry.stop()
        if sshd is not None:
            sshd.stop()
            shutil.rmtree(sshd_dir, ignore_errors=True)
    print("cold pulls (s):", " ".join(f"{wall:.2f}" for wall in walls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
