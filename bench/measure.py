"""Measuring a process tree: wall time, CPU time, peak RSS and bytes written.

CPU time and bytes written come from the kernel's accounting of reaped children
(`getrusage(RUSAGE_CHILDREN)` in this process, and `/proc/<shell>/io` of a wrapper
shell that reaps the command); peak RSS is the largest sum of the tree's resident
memory, sampled every 50 ms.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    name: str
    wall: float = 0.0
    cpu: float = 0.0
    peak_rss: int = 0
    written: int = 0
    ok: bool = True
    note: str = ""
    steps: list[Sample] = field(default_factory=list)
    #: False when `written` could not be measured (printed as "–").
    written_counted: bool = True

    @classmethod
    def combine(cls, name: str, steps: Sequence[Sample]) -> Sample:
        return cls(name, wall=sum(s.wall for s in steps), cpu=sum(s.cpu for s in steps),
                   peak_rss=max((s.peak_rss for s in steps), default=0),
                   written=sum(s.written for s in steps), ok=all(s.ok for s in steps),
                   note="; ".join(s.note for s in steps if s.note), steps=list(steps))

    @classmethod
    def failed(cls, name: str, why: str) -> Sample:
        return cls(name, ok=False, note=why)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def tree_pids(root: int) -> list[int]:
    tree = _children()
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(tree.get(pid, ()))
    return found


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:
        return 0


class TreeSampler:
    """Samples the summed RSS of `root` and its descendants until stopped."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        self.peak = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(rss(pid) for pid in tree_pids(self.root)))
            self._stop.wait(self._interval)


def read_io(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return {}
    return {key: int(value) for key, value in
            (line.split(": ") for line in text.splitlines() if ": " in line)}


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """utime + stime of `pid` (and of its reaped children)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def hwm(pid: int) -> int:
    """VmHWM (peak RSS) of one process, in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run(name: str, command: str, *, env: dict[str, str] | None = None,
        cwd: Path | None = None, timeout: float = 3600.0) -> Sample:
    """Runs a shell command line under a wrapper shell and measures it."""
    with tempfile.NamedTemporaryFile("r", suffix=".io") as io_file, \
            tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        wrapper = f'{command}\nrc=$?\ncat /proc/$$/io > {io_file.name}\nexit $rc\n'
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        process = subprocess.Popen(["/bin/bash", "-c", wrapper], env=env, cwd=cwd,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        with TreeSampler(process.pid) as sampler:
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in reversed(tree_pids(process.pid)):
                    with contextlib.suppress(OSError):
                        os.kill(pid, 9)
                process.wait()
                code = -9
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        io = {key: int(value) for key, value in
              (line.split(": ") for line in Path(io_file.name).read_text().splitlines()
               if ": " in line)}
        log.seek(0)
        output = log.read()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sample = Sample(name, wall=wall, cpu=cpu, peak_rss=sampler.peak,
                    written=io.get("write_bytes", 0) - io.get("cancelled_write_bytes", 0))
    if code != 0:
        sample.ok = False
        sample.note = f"exit {code}: {output.strip()[-600:]}"
    return sample
