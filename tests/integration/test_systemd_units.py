"""The systemd units `imagegw units` ships: valid for systemd, hardened, and stopping late
enough for a worker's SIGTERM drain."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.services import IMAGEGW

UNITS = ("imagegw-gateway.service", "imagegw-worker@.service")
RUN_TIMEOUT = 60.0


def printed(name: str) -> str:
    done = subprocess.run([IMAGEGW, "units", "--print", name, "--exec", IMAGEGW],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def service_section(text: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return dict(parser["Service"])


def test_units_are_listed() -> None:
    done = subprocess.run([IMAGEGW, "units"], capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          check=True)
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == list(UNITS)


@pytest.mark.parametrize("name", [*UNITS, "imagegw-worker@cluster1.service"])
def test_systemd_analyze_verify_passes(name: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian package systemd; scripts/setup installs it)"
    source = re.sub(r"@[^.]+\.service$", "@.service", name)
    unit = tmp_path / name
    unit.write_text(printed(source))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    complaints = [line for line in done.stderr.splitlines() if name in line]
    assert complaints == [], "systemd ignores a line of the unit"


@pytest.mark.parametrize("name", UNITS)
def test_unit_runs_unprivileged_and_hardened(name: str) -> None:
    service = service_section(printed(name))
    assert (service["User"], service["Group"]) == ("imagegw", "imagegw")
    expected = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                "PrivateTmp": "yes", "Restart": "on-failure", "KillSignal": "SIGTERM"}
    assert {key: service[key] for key in expected} == expected
    assert service["ReadWritePaths"].split(), "the site's directories are the only writable ones"
    assert service["ExecStart"].startswith(f"{IMAGEGW} ")


def test_worker_stop_timeout_outlasts_its_drain() -> None:
    service = service_section(printed("imagegw-worker@.service"))
    drain_option = re.search(r"--drain-timeout (\d+)", service["ExecStart"])
    assert drain_option, service["ExecStart"]
    drain = float(drain_option.group(1))
    assert float(service["TimeoutStopSec"]) > drain + 10
    assert "--config /etc/imagegw/worker-%i.json" in service["ExecStart"]
