"""The systemd units `imagegw units` ships: valid for systemd, hardened, stopping late
enough for a worker's SIGTERM drain, and their command lines start the services.

No systemd runs here, so the command lines are run the way systemd would: ExecStart split
into words, %i/%H and $IMAGEGW_WORKER_ARGS expanded, Environment= set."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.services import IMAGEGW, embedded_config, wait_healthy

UNITS = ("imagegw-gateway.service", "imagegw-worker@.service")
RUN_TIMEOUT = 60.0
START_TIMEOUT = 30.0


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
                "PrivateTmp": "yes", "Restart": "on-failure", "KillSignal": "SIGTERM",
                # SIGTERM to the service only: a draining worker's tar2sqfs runs on.
                "KillMode": "mixed"}
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


def command_line(name: str, instance: str, environment: dict[str, str],
                 paths: dict[str, str]) -> list[str]:
    """The unit's ExecStart as systemd runs it, with its /etc paths replaced by `paths`."""
    words: list[str] = []
    for word in shlex.split(service_section(printed(name))["ExecStart"]):
        if word.startswith("$"):
            words += shlex.split(environment.get(word[1:], ""))
            continue
        word = word.replace("%i", instance).replace("%H", socket.gethostname())
        words.append(paths.get(word, word))
    return words


def unit_environment(name: str, **site: str) -> dict[str, str]:
    """The unit's Environment= (what an EnvironmentFile may override: `site`)."""
    pairs = dict(item.split("=", 1) for item in
                 shlex.split(service_section(printed(name)).get("Environment", "")))
    env = {key: value for key, value in os.environ.items() if not key.startswith("IMAGEGW_")}
    return {**env, **pairs, **site}


def wait_for_text(path: Path, process: subprocess.Popen[bytes], log: Path, needle: str = "") -> str:
    """The text of `path` once it holds `needle` (or anything); fails if the process exits."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        text = path.read_text() if path.exists() else ""
        if text.strip() and needle in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{path} did not show {needle!r}:\n{log.read_text()}")


def stop_within(process: subprocess.Popen[bytes], timeout: float, log: Path) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        raise AssertionError(f"no exit within TimeoutStopSec={timeout:g}:\n{log.read_text()}") from None


def test_unit_command_lines_start_both_services_and_stop_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = embedded_config(tmp_path)
    worker_config = tmp_path / "worker-test.json"
    worker_config.write_text(json.dumps(config))
    worker_address = tmp_path / "worker.address"
    # What /etc/imagegw/worker-test.env would say.
    worker_env = unit_environment("imagegw-worker@.service", IMAGEGW_HOME=str(tmp_path / "data"),
                                  IMAGEGW_WORKER_LISTEN="127.0.0.1:0",
                                  IMAGEGW_WORKER_ARGS=f"--address-file {worker_address}")
    worker_args = command_line("imagegw-worker@.service", "test", worker_env,
                               {"/etc/imagegw/worker-test.json": str(worker_config)})
    worker_log = tmp_path / "worker.log"
    with open(worker_log, "wb") as log:
        worker = subprocess.Popen(worker_args, env=worker_env, stdout=log, stderr=subprocess.STDOUT,
                                  cwd=tmp_path)
    try:
        address = wait_for_text(worker_address, worker, worker_log).strip()
        wait_healthy(address)
        gateway_config = tmp_path / "imagemanager.json"
        gateway_config.write_text(json.dumps({**config, "WorkerAddresses": [address],
                                              "ListenAddress": "127.0.0.1:0"}))
        gateway_args = command_line("imagegw-gateway.service", "", {},
                                    {"/etc/imagegw/imagemanager.json": str(gateway_config)})
        gateway_log = tmp_path / "gateway.log"
        with open(gateway_log, "wb") as log:
            gateway = subprocess.Popen(gateway_args, env=unit_environment("imagegw-gateway.service"),
                                       stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            # The unit has no --address-file: the address is the one `imagegw` prints.
            shown = wait_for_text(gateway_log, gateway, gateway_log, "listening on ")
            wait_healthy(shown.split("listening on ", 1)[1].split()[0])
        finally:
            gateway_stop = float(service_section(printed("imagegw-gateway.service"))["TimeoutStopSec"])
            assert stop_within(gateway, gateway_stop, gateway_log) == 0
    finally:
        worker_stop = float(service_section(printed("imagegw-worker@.service"))["TimeoutStopSec"])
        assert stop_within(worker, worker_stop, worker_log) == 0
    assert f"--worker-id {socket.gethostname()}-test" in " ".join(worker_args)
