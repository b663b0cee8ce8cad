"""A soak under faults: many users pull through two gateways and two workers sharing Redis
while a chaos loop SIGKILLs workers and gateways, restarts Redis, fills and frees the
scratch file system and deletes published images; then checks what users rely on.

Everything runs on 127.0.0.1 as real processes (tests/support helpers). Bounded in time:
`--duration` seconds of load and chaos, then at most `--settle` seconds for the pulls in
flight to end. Exit status 0 when every check holds. `--report FILE` writes the figures as
Markdown (docs/soak-report.md holds the last long run)."""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imagegw.client import GatewayClient, GatewayError, PullFailed  # noqa: E402
from imagegw.domain.model import ImageState  # noqa: E402
from imagegw.gateway.store.sqlite import SqliteImageStore  # noqa: E402
from tests.support import layers as L  # noqa: E402
from tests.support.images import push_image  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402
from tests.support.services import ServiceProcess, embedded_config, restart, start_service  # noqa: E402

SYSTEM = "default"
SCRATCH_SIZE = "48m"
#: The gateways' FileCheckInterval: a READY record whose files were deleted is retired by
#: the next sweep at the latest, so the end checks wait that long once the load stopped.
SWEEP_SECONDS = 2
DONE = re.compile(r"job (\w+): (\S+) -> ([0-9a-f]{12}) in ")


@dataclass
class Outcomes:
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: int = 0
    ready: int = 0
    failed: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)
    faults: collections.Counter = field(default_factory=collections.Counter)
    failed_jobs: dict[str, str] = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load and chaos")
    parser.add_argument("--settle", type=float, default=120.0,
                        help="seconds the pulls in flight may take to end afterwards")
    parser.add_argument("--users", type=int, default=6, help="users pulling at once")
    parser.add_argument("--images", type=int, default=6, help="distinct images")
    parser.add_argument("--chaos-every", type=float, default=4.0,
                        help="mean seconds between faults")
    parser.add_argument("--retag-every", type=float, default=3.0,
                        help="seconds between pushes of a new version under an existing tag "
                        "(so re-checks convert again); 0: never")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", help="keep everything here (default: a temporary dir)")
    parser.add_argument("--report", help="write the figures here as Markdown")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        return Soak(args, workdir, seed).run()
    with tempfile.TemporaryDirectory(prefix="imagegw-soak-") as tmp:
        return Soak(args, Path(tmp), seed).run()


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path, seed: int) -> None:
        self.args = args
        self.workdir = workdir
        self.seed = seed
        self.random = random.Random(seed)
        self.outcomes = Outcomes()
        self.stop_load = threading.Event()
        self.stop_chaos = threading.Event()
        self.gateways: list[ServiceProcess] = []
        self.workers: list[ServiceProcess] = []
        self.service_lock = threading.Lock()
        self.scratch = workdir / "expand"
        self.images_dir = workdir / "images" / SYSTEM
        self.scratch_mounted = False
        self.notes: list[str] = []
        self._quiet = threading.Event()

    # -- the run ----------------------------------------------------------------------

    def run(self) -> int:
        started = time.monotonic()
        registry = start_registry(self.workdir / "registry")
        self.redis = RedisServer(self.workdir / "redis", appendonly=True)
        try:
            self.redis.start()
            references = self._push_images(registry.url)
            self._mount_scratch()
            config = embedded_config(
                self.workdir, registry_url=registry.url, Broker=self.redis.url,
                JobLeaseSeconds=6, WorkerTimeToLive=6, PullUpdateTimeout=5,
                FileCheckInterval=SWEEP_SECONDS, Limits={"httpTimeout": 15, "httpRetries": 2})
            self.gateways = [start_service("gateway", config, self.workdir / f"gw{i}",
                                           name=f"gateway{i}") for i in range(2)]
            self.workers = [start_service("worker", config, self.workdir / f"w{i}",
                                          name=f"worker{i}") for i in range(2)]
            self.addresses = [gateway.address for gateway in self.gateways]
            users = [threading.Thread(target=self._user, args=(index, references), daemon=True)
                     for index in range(self.args.users)]
            chaos = threading.Thread(target=self._chaos, daemon=True)
            watcher = threading.Thread(target=self._watch_records, daemon=True)
            retagger = threading.Thread(target=self._retag, args=(registry.url,), daemon=True)
            for thread in (*users, chaos, watcher, retagger):
                thread.start()
            time.sleep(self.args.duration)
            self.stop_chaos.set()
            chaos.join()
            retagger.join()
            self._heal()
            self.stop_load.set()
            deadline = time.monotonic() + self.args.settle
            for thread in users:
                thread.join(max(0.1, deadline - time.monotonic()))
            stuck_users = sum(thread.is_alive() for thread in users)
            self._wait_for_quiet(deadline)
            time.sleep(SWEEP_SECONDS + 1.0)
            watcher.join(5)
            checks = self._check(stuck_users)
        finally:
            for service in (*self.gateways, *self.workers):
                service.stop()
            self.redis.stop()
            registry.stop()
            self._unmount_scratch()
        return self._report(checks, time.monotonic() - started)

    def _push_images(self, registry_url: str) -> list[str]:
        references = []
        for index in range(self.args.images):
            self._push_version(registry_url, index, 0)
            references.append(f"testreg/soak/image{index}:1")
        return references

    def _push_version(self, registry_url: str, index: int, version: int) -> None:
        rng = random.Random(self.seed * 7919 + index * 101 + version)
        payload = rng.randbytes(rng.randrange(512 * 1024, 3 * 1024 * 1024))
        layers = [L.layer(L.file(f"data/{index}.bin", payload), compression="none"),
                  L.layer(L.file("etc/marker", f"image {index} v{version}".encode()))]
        push_image(registry_url, f"soak/image{index}", "1", layers)

    def _retag(self, registry_url: str) -> None:
        """Moves tags to new versions, so pulls after PullUpdateTimeout convert again."""
        if self.args.retag_every <= 0:
            return
        versions: collections.Counter[int] = collections.Counter()
        while not self.stop_chaos.wait(self.args.retag_every):
            index = self.random.randrange(self.args.images)
            versions[index] += 1
            try:
                self._push_version(registry_url, index, versions[index])
            except Exception as exc:
                self.notes.append(f"pushing a new version failed: {exc}")
                continue
            self.outcomes.faults["new version pushed (not a fault)"] += 1

    def _user(self, index: int, references: list[str]) -> None:
        rng = random.Random(self.seed * 31 + index)
        addresses = self.addresses[index % 2:] + self.addresses[:index % 2]
        with GatewayClient(addresses, timeout=20, pull_timeout=300) as client:
            while not self.stop_load.is_set():
                # Half the users share a few hot images; the others spread over all.
                pool = references[:2] if index % 2 else references
                reference = rng.choice(pool)
                with self.outcomes.lock:
                    self.outcomes.started += 1
                try:
                    client.pull_and_wait(SYSTEM, reference)
                except PullFailed as exc:
                    with self.outcomes.lock:
                        self.outcomes.failed[_cause(str(exc))] += 1
                except GatewayError as exc:
                    with self.outcomes.lock:
                        self.outcomes.errors[f"{type(exc).__name__}: {_cause(str(exc))}"] += 1
                    time.sleep(0.5)
                else:
                    with self.outcomes.lock:
                        self.outcomes.ready += 1
                time.sleep(rng.uniform(0, 0.5))

    def _watch_records(self) -> None:
        """Notes every job whose pull record became FAILED, with its cause."""
        store = SqliteImageStore(str(self.workdir / "data" / "imagegw.sqlite3"))
        try:
            while not (self.stop_load.is_set() and self._quiet.is_set()):
                with contextlib.suppress(Exception):
                    for pull in store.list_pulls(SYSTEM):
                        if pull.state == ImageState.FAILED and pull.failure is not None:
                            self.outcomes.failed_jobs.setdefault(pull.job_id,
                                                                 pull.failure.message)
                time.sleep(0.3)
        finally:
            store.close()

    # -- chaos --------------------------------------------------------------------------

    def _chaos(self) -> None:
        kinds = ["kill worker", "kill gateway", "restart redis", "delete image"]
        if self.scratch_mounted:
            kinds.append("fill scratch")
        while not self.stop_chaos.wait(self.random.expovariate(1 / self.args.chaos_every)):
            kind = self.random.choice(kinds)
            try:
                getattr(self, "_" + kind.replace(" ", "_"))()
            except Exception as exc:  # a fault that could not be injected is reported
                self.notes.append(f"{kind} failed: {type(exc).__name__}: {exc}")
                continue
            self.outcomes.faults[kind] += 1

    def _kill_worker(self) -> None:
        index = self.random.randrange(len(self.workers))
        with self.service_lock:
            self.workers[index].kill()
        time.sleep(self.random.uniform(0.5, 2.0))
        with self.service_lock:
            self.workers[index] = restart(self.workers[index])

    def _kill_gateway(self) -> None:
        index = self.random.randrange(len(self.gateways))
        with self.service_lock:
            self.gateways[index].kill()
        time.sleep(self.random.uniform(0.5, 2.0))
        with self.service_lock:
            self.gateways[index] = restart(self.gateways[index])

    def _restart_redis(self) -> None:
        self.redis.kill()
        time.sleep(self.random.uniform(1.0, 3.0))
        self.redis.start()  # the same port and append-only file

    def _fill_scratch(self) -> None:
        filler = self.scratch / "soak-filler.bin"
        with open(filler, "wb") as handle, contextlib.suppress(OSError):
            block = b"\0" * (1 << 20)
            while True:
                handle.write(block)
        time.sleep(self.random.uniform(2.0, 6.0))
        filler.unlink(missing_ok=True)

    def _delete_image(self) -> None:
        published = sorted(self.images_dir.glob("*.squashfs")) if self.images_dir.exists() else []
        if not published:
            raise RuntimeError("no published image yet")
        image = self.random.choice(published)
        image.unlink(missing_ok=True)
        image.with_suffix(".meta").unlink(missing_ok=True)

    def _heal(self) -> None:
        """Everything up again after the chaos: scratch free, every process running."""
        (self.scratch / "soak-filler.bin").unlink(missing_ok=True)
        if self.redis.process is None:
            self.redis.start()
        with self.service_lock:
            for group in (self.gateways, self.workers):
                for index, service in enumerate(group):
                    if service.process.poll() is not None:
                        group[index] = restart(service)

    def _wait_for_quiet(self, deadline: float) -> None:
        store = SqliteImageStore(str(self.workdir / "data" / "imagegw.sqlite3"))
        try:
            while time.monotonic() < deadline and store.in_flight_pulls():
                time.sleep(0.5)
        finally:
            store.close()
        self._quiet.set()

    def _mount_scratch(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            self.notes.append("fill scratch: not run (mounting a small tmpfs needs root)")
            return
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SCRATCH_SIZE}", "tmpfs",
                               str(self.scratch)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            self.notes.append(f"fill scratch: not run (mount failed: {done.stderr.strip()})")
            return
        self.scratch_mounted = True

    def _unmount_scratch(self) -> None:
        if self.scratch_mounted:
            if subprocess.run(["umount", str(self.scratch)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(self.scratch)], check=False)
            self.scratch_mounted = False

    # -- the end checks -----------------------------------------------------------------

    def _completed_jobs(self) -> dict[str, str]:
        completed = {}
        for log in self.workdir.glob("w*/worker*.log"):
            for job_id, _reference, image in DONE.findall(log.read_text(errors="replace")):
                completed[job_id] = image
        return completed

    def _check(self, stuck_users: int) -> dict[str, tuple[bool, str]]:
        checks: dict[str, tuple[bool, str]] = {}
        completed = self._completed_jobs()
        store = SqliteImageStore(str(self.workdir / "data" / "imagegw.sqlite3"))
        try:
            in_flight = store.in_flight_pulls()
            images, _ = store.list_images(SYSTEM, ImageState.READY, 1000, "")
        finally:
            store.close()
        false_failures = {job: cause for job, cause in self.outcomes.failed_jobs.items()
                          if job in completed}
        checks["no FAILED record for a job that published its image"] = (
            not false_failures, json.dumps(false_failures)[:500] if false_failures else "")
        checks["no job stuck (pulls in flight, users still waiting)"] = (
            not in_flight and not stuck_users,
            f"{len(in_flight)} pulls in flight, {stuck_users} users waiting")
        broken = []
        for image in images:
            path = self.images_dir / image.image_file
            meta = self.images_dir / image.meta_file
            if not path.exists() or not meta.exists():
                broken.append(f"{image.image_file}: missing")
                continue
            if image.size_bytes and path.stat().st_size != image.size_bytes:
                broken.append(f"{image.image_file}: {path.stat().st_size} bytes")
                continue
            listed = subprocess.run(["unsquashfs", "-l", str(path)], capture_output=True,
                                    text=True, check=False)
            if listed.returncode != 0 or "etc/marker" not in listed.stdout:
                broken.append(f"{image.image_file}: unsquashfs says {listed.stderr.strip()[:80]}")
        checks["every READY record has complete files (unsquashfs)"] = (
            not broken, "; ".join(broken[:5]))
        names = sorted(os.listdir(self.images_dir)) if self.images_dir.exists() else []
        temporaries = [name for name in names if name.startswith(".")]
        checks["no temporaries left in the image directory"] = (
            not temporaries, ", ".join(temporaries[:5]))
        ids = collections.Counter(name.split(".")[0] for name in names
                                  if name.endswith(".squashfs"))
        checks["one image file per id"] = (all(count == 1 for count in ids.values()), "")
        scratch = [p.name for p in self.scratch.iterdir()
                   if p.name not in ("lost+found", "soak-filler.bin")]
        checks["no scratch left by finished jobs"] = (not scratch, ", ".join(scratch[:5]))
        lost = sum(self.outcomes.errors.values())
        checks["lost = 0 (every pull ended READY or FAILED with a cause)"] = (
            lost == 0, json.dumps(dict(self.outcomes.errors))[:500])
        self.completed = completed
        self.ready_records = len(images)
        return checks

    def _report(self, checks: dict[str, tuple[bool, str]], seconds: float) -> int:
        o = self.outcomes
        lines = [
            f"soak: {self.args.duration:g} s of load and chaos, {self.args.users} users, "
            f"{self.args.images} images, 2 gateways, 2 workers, Redis (AOF); seed {self.seed}; "
            f"{seconds:.0f} s in all",
            f"pulls: {o.started} started, {o.ready} READY, {sum(o.failed.values())} FAILED, "
            f"{sum(o.errors.values())} lost",
            "FAILED causes: " + (", ".join(f"{n}x {c}" for c, n in o.failed.most_common())
                                 or "none"),
            "faults: " + (", ".join(f"{kind} {n}" for kind, n in sorted(o.faults.items()))
                          or "none"),
            f"jobs run to completion by workers: {len(self.completed)}; jobs whose pull record "
            f"became FAILED: {len(o.failed_jobs)}; READY image records: {self.ready_records}",
            *[f"note: {note}" for note in self.notes[:10]],
            "checks:",
            *[f"  {'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}"
              for name, (ok, detail) in checks.items()],
        ]
        text = "\n".join(lines)
        print(text)
        if self.args.report:
            Path(self.args.report).write_text(
                "# Soak report\n\n`scripts/soak "
                f"--duration {self.args.duration:g} --users {self.args.users} --images "
                f"{self.args.images}`, on the project's 2-core machine.\n\n```\n{text}\n```\n")
        return 0 if all(ok for ok, _ in checks.values()) else 1


def _cause(message: str) -> str:
    """A failure message without ids, paths and addresses, to count causes."""
    if "No space left on device" in message and "ExpandDirectory" in message:
        return "scratch full: no space left on device in ExpandDirectory"
    message = re.sub(r"/\S*", "<path>", message)
    message = re.sub(r"[0-9a-f]{12,64}", "<id>", message)
    message = re.sub(r"127\.0\.0\.1:\d+", "<addr>", message)
    return message[:160]


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(main())
