"""Issue 25: a short run (20 s of load) of the soak under faults (scripts/soak) as CI runs it: two
gateways, two workers, Redis, users pulling while workers, gateways and Redis are killed
and the scratch file system fills; every end check must hold and nothing be lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_short_soak_under_faults_loses_no_pull(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--duration", "20",
         "--settle", "60", "--users", "4", "--images", "4", "--chaos-every", "2",
         "--seed", "25", "--workdir", str(tmp_path / "soak")],
        capture_output=True, text=True, timeout=240, check=False)
    report = done.stdout
    assert done.returncode == 0, report + done.stderr[-3000:]
    assert "lost = 0" in report and "FAIL " not in report, report
    assert ", 0 lost" in report, report
    faults = next(line for line in report.splitlines() if line.startswith("faults: "))
    assert "none" not in faults, "the chaos loop injected faults"
