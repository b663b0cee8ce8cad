"""Runs the issue 4 tests and writes docs/hostile-input-report.md from their results.

    .venv/bin/python -m tests.support.hostile_report [docs/hostile-input-report.md]

Every number in the report comes from this run: pytest writes a JUnit XML file in which
each test recorded its actual outcome and elapsed time (`record_property`), and the case
descriptions come from the corpus (tests/support/hostile_corpus.py).
"""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.hostile_corpus import BASE_LIMITS, cases

TEST_FILES = (
    "tests/integration/test_hostile_images.py",
    "tests/integration/test_registry_faults.py",
    "tests/integration/test_disk_faults.py",
)
HOSTILE = "test_hostile_images"


@dataclass
class Result:
    module: str
    name: str
    param: str
    status: str  # passed, failed, xfail, xpass, skipped
    seconds: float
    properties: dict[str, str] = field(default_factory=dict)
    reason: str = ""


def run_tests(junit: Path) -> int:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-o", "junit_family=xunit1", f"--junitxml={junit}", *TEST_FILES]
    return subprocess.run(command, check=False).returncode


def read_results(junit: Path) -> list[Result]:
    results = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        full = case.get("name", "")
        name, _, param = full.partition("[")
        status, reason = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                status = "failed"
                reason = child.get("message", "")
            elif child.tag == "skipped":
                kind = child.get("type", "")
                status = "xfail" if "xfail" in kind else "skipped"
                reason = child.get("message", "")
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        results.append(Result(module, name, param.rstrip("]"), status,
                              float(case.get("time", "0")), props, reason))
    return results


def _cell(text: str, limit: int = 160) -> str:
    text = re.sub(r"(sha256:[0-9a-f]{12})[0-9a-f]{52}", r"\1…", text)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "\\n")
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode()
                   for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render(results: list[Result], exit_code: int) -> str:
    by_param = {r.param: r for r in results if r.module == HOSTILE and r.param}
    corpus = cases()
    lines = []
    got_through = []
    rows = []
    for number, item in enumerate(corpus, 1):
        result = by_param.get(item.name)
        status = result.status if result else "not run"
        expected = (f"refused: {item.error} \"{item.fragment}\"" if item.expect == "rejected"
                    else "neutralised: " + (", ".join(
                        f"{x.path} ({x.type})" for x in item.lands) or "built, checked meta")
                    + (f"; dropped {', '.join(item.absent)}" if item.absent else ""))
        outcome = result.properties.get("outcome", "") if result else ""
        held = status == "passed"
        if not held:
            got_through.append((item, status, result))
        verdict = "held" if held else f"**GOT THROUGH** ({status})"
        test = f"{result.name}[{item.name}]" if result else "-"
        rows.append(f"| {number} | `{item.name}` | {_cell(item.hostile)} | {_cell(expected)} | "
                    f"{verdict}: {_cell(outcome)} | `{test}` |")
    faults = [r for r in results if r.module == "test_registry_faults"]
    disks = [r for r in results if r.module == "test_disk_faults"]
    others = [r for r in results if r.module == HOSTILE and not r.param]
    all_passed = sum(r.status == "passed" for r in results)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")

    lines += [
        "# Hostile input and faults: report (issue 4)",
        "",
        f"Generated {now} by `.venv/bin/python -m tests.support.hostile_report` from one run of "
        f"`{' '.join(TEST_FILES)}` (pytest exit code {exit_code}: {all_passed} passed, "
        f"{sum(r.status == 'xfail' for r in results)} xfailed, "
        f"{sum(r.status == 'failed' for r in results)} failed).",
        "",
        "## Summary",
        "",
        f"- **Hostile inputs tried: {len(corpus)}. Got through: {len(got_through)}.**",
        f"- Registry fault scenarios: {len(faults)}, passed "
        f"{sum(r.status == 'passed' for r in faults)}.",
        f"- Disk fault scenarios: {len(disks)}, passed {sum(r.status == 'passed' for r in disks)}"
        f", known bugs (strict xfail) {sum(r.status == 'xfail' for r in disks)}.",
        "",
        "Each hostile input is pushed to a real `docker-registry` (what a registry refuses to "
        "store, such as malformed JSON, is served by the fault-injecting proxy in front of it) "
        "and pulled end to end through the worker's `Builder` with limits "
        f"`{dict(BASE_LIMITS)}` unless the row says otherwise. After every case the test "
        "checks that a sentinel tree beside the worker's directories is unchanged, that no "
        "file named like a hostile member (`PWNED`) exists under the test's root, in `/tmp` or "
        "in the working directory, that `/tmp/imagegw-hostile-canary` (the directory absolute "
        "and symlinked members aim at) stays empty, that scratch is empty, that the cache holds "
        "no temporaries, and that nothing is published for a refused image. \"Got through\" "
        "counts every case whose test did not pass (including known bugs marked xfail).",
        "",
        "## Hostile layers, manifests and configs",
        "",
        "| # | case | hostile input | expected | outcome (from this run) | test |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if got_through:
        lines += ["### What got through", ""]
        for item, status, result in got_through:
            reason = result.reason if result else "not run"
            lines.append(f"- `{item.name}` ({status}): {_cell(reason, 600)}")
        lines.append("")
    lines += _fault_table("Registry faults (proxy in front of a real docker-registry)", faults)
    lines += _fault_table("Disk faults (tmpfs of 2 MiB, read-only bind mounts, chattr +i)",
                          disks)
    if others:
        lines += ["## Corpus", ""]
        lines += [f"- `{r.name}`: {r.status}" for r in others]
        lines += ["", "The corpus files live in `tests/fixtures/hostile/` (one directory per "
                  "case: layer blobs, config, manifest; `index.json` lists the expectations); "
                  "regenerate them with `.venv/bin/python -m tests.support.hostile_corpus "
                  "tests/fixtures/hostile`.", ""]
    return "\n".join(lines)


def _fault_table(title: str, results: list[Result]) -> list[str]:
    lines = [f"## {title}", "", "| test | status | outcome | elapsed | bound |",
             "|---|---|---|---|---|"]
    for r in results:
        outcome = r.properties.get("outcome", "") or _cell(r.reason, 300)
        seconds = r.properties.get("seconds", f"{r.seconds:.2f}")
        status = r.status if r.status != "xfail" else "known bug (xfail)"
        lines.append(f"| `{r.name}{'[' + r.param + ']' if r.param else ''}` | {status} | "
                     f"{_cell(outcome, 300)} | {seconds} s | "
                     f"{_cell(r.properties.get('bound', '-'))} |")
    lines += [""]
    known = [r for r in results if r.status == "xfail"]
    if known:
        lines += ["Known bugs (strict xfail, in modules owned by the performance rework):", ""]
        lines += [f"- `{r.name}`: {_cell(r.reason, 600)}" for r in known]
        lines += [""]
    return lines


def main() -> int:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/hostile-input-report.md")
    with tempfile.TemporaryDirectory() as scratch:
        junit = Path(scratch) / "junit.xml"
        code = run_tests(junit)
        results = read_results(junit)
    target.write_text(render(results, code) + "\n")
    print(f"wrote {target}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
