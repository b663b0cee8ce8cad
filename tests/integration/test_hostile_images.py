"""Issue 4: every case of the hostile corpus, pushed to a real docker-registry and pulled
end to end through the worker's Builder.

Each case is refused with its error class and a message a person can act on, or
neutralised (the member lands where the rules say, inside the image). Either way the
file system around the scratch root is checked afterwards: a sentinel tree beside the
worker's directories is unchanged, no file named like a hostile member exists anywhere
on the host paths we can see, scratch is empty, no temporaries are left, and nothing is
published unless the case is neutralised.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

import pytest

from imagegw.cache.layout import WorkerPaths
from imagegw.domain import errors
from imagegw.domain.config import parse_config
from imagegw.domain.model import BuildJob, BuildResult
from imagegw.pipeline.meta import parse_meta
from imagegw.worker.build import Builder
from tests.support.hostile_corpus import (
    CANARY,
    CANARY_DIR,
    NEUTRALISED,
    REJECTED,
    TAG,
    Case,
    cases,
    corpus_files,
    faults_for,
    push_case,
)
from tests.support.proxy import RegistryProxy
from tests.support.squashfs_tree import read_squashfs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hostile"

#: Cases that expose bugs in modules being reworked by someone else (see the report).
KNOWN_BUGS: dict[str, str] = {}


def params(expect: str) -> list:
    return [pytest.param(c, id=c.name, marks=pytest.mark.xfail(
                strict=True, reason=KNOWN_BUGS[c.name])) if c.name in KNOWN_BUGS
            else pytest.param(c, id=c.name)
            for c in cases() if c.expect == expect]


def builder_for(root: Path, registry_url: str, limits: dict) -> Builder:
    config = parse_config({
        "CacheDirectory": str(root / "cache"), "ExpandDirectory": str(root / "expand"),
        "Locations": {"testreg": {"url": registry_url}},
        "Platforms": {"cluster": {"accesstype": "local",
                                  "local": {"imageDir": str(root / "images")}}},
        "Limits": limits,
    })
    return Builder(config, WorkerPaths(config.cache_dir, config.expand_dir))


class Surroundings:
    """The host file system around one build: a sentinel tree and every path we watch."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sentinel = root / "sentinel"
        (self.sentinel / "etc").mkdir(parents=True)
        (self.sentinel / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
        (self.sentinel / "bin").mkdir()
        (self.sentinel / "bin" / "sh").write_bytes(b"\x7fELF not really")
        os.symlink("etc", self.sentinel / "link-to-etc")
        self.before = self._snapshot(self.sentinel)
        self.tmp_before = set(os.listdir("/tmp"))

    @staticmethod
    def _snapshot(top: Path) -> dict[str, tuple]:
        found = {}
        for path in sorted(top.rglob("*")):
            info = path.lstat()
            content = b""
            if path.is_file() and not path.is_symlink():
                content = path.read_bytes()
            found[str(path.relative_to(top))] = (
                info.st_mode, info.st_size, hashlib.sha256(content).hexdigest(),
                os.readlink(path) if path.is_symlink() else "")
        return found

    def hostile_names(self) -> list[str]:
        """Paths whose name carries the canary: under our root, in /tmp, in the cwd."""
        hits = [str(p) for p in self.root.rglob(f"*{CANARY}*")]
        hits += [name for name in set(os.listdir("/tmp")) - self.tmp_before if CANARY in name]
        hits += [name for name in os.listdir(".") if CANARY in name]
        canary_dir = Path(CANARY_DIR)
        if canary_dir.is_dir():
            hits += [str(p) for p in canary_dir.iterdir()]
        return hits

    def check_untouched(self) -> None:
        assert self._snapshot(self.sentinel) == self.before, "the sentinel tree changed"
        assert self.hostile_names() == [], "a hostile member was written to the host"
        expand = self.root / "expand"
        assert not expand.exists() or os.listdir(expand) == [], "scratch was not cleaned"
        blobs = self.root / "cache" / "blobs"
        leftovers = [p.name for p in blobs.rglob("*") if p.name.startswith(".")] \
            if blobs.exists() else []
        assert leftovers == [], "the layer cache kept temporaries"

    def published(self) -> list[str]:
        images = self.root / "images"
        return sorted(os.listdir(images)) if images.exists() else []


@pytest.fixture(scope="module", autouse=True)
def canary_dir():
    """The host directory absolute and symlinked members aim at: it must stay empty."""
    path = Path(CANARY_DIR)
    path.mkdir(exist_ok=True)
    yield path
    with contextlib.suppress(OSError):
        path.rmdir()


def build(case: Case, registry_url: str, root: Path) -> tuple[BuildResult | None, Exception | None]:
    repository = push_case(case, registry_url)
    with RegistryProxy(registry_url) as proxy:
        proxy.faults.extend(faults_for(case))
        builder = builder_for(root, proxy.url, case.all_limits())
        job = BuildJob(job_id=f"hostile-{case.name}", system="cluster",
                       reference=f"testreg/{repository}:{TAG}")
        try:
            return builder.build(job, lambda progress: None), None
        except Exception as exc:  # judged below: only our error tree is an acceptable refusal
            return None, exc


def describe(result: BuildResult | None, error: Exception | None) -> str:
    if error is not None:
        return f"{type(error).__name__}: {error}"[:300]
    assert result is not None
    return f"built {result.image_id[:12]} ({result.size_bytes} bytes)"


@pytest.mark.parametrize("case", params(REJECTED))
def test_hostile_input_is_refused_with_an_actionable_cause_and_nothing_escapes(
        case: Case, registry, tmp_path: Path, record_property) -> None:
    surroundings = Surroundings(tmp_path)
    started = time.monotonic()
    result, error = build(case, registry.url, tmp_path)
    record_property("outcome", describe(result, error))
    record_property("seconds", f"{time.monotonic() - started:.2f}")
    assert error is not None, f"got through: {case.hostile} was converted"
    assert isinstance(error, errors.ImageGatewayError), f"crashed instead of refusing: {error!r}"
    assert type(error).__name__ == case.error
    assert case.fragment in str(error)
    assert surroundings.published() == [], "nothing may be published for a refused image"
    surroundings.check_untouched()


@pytest.mark.parametrize("case", params(NEUTRALISED))
def test_hostile_member_is_neutralised_inside_the_image_and_nothing_escapes(
        case: Case, registry, tmp_path: Path, record_property) -> None:
    surroundings = Surroundings(tmp_path)
    started = time.monotonic()
    result, error = build(case, registry.url, tmp_path)
    record_property("outcome", describe(result, error))
    record_property("seconds", f"{time.monotonic() - started:.2f}")
    assert error is None, f"refused instead of neutralised: {error!r}"
    assert result is not None
    assert surroundings.published() == sorted([result.image_file, result.meta_file])
    tree = read_squashfs(tmp_path / "images" / result.image_file)
    for expected in case.lands:
        assert expected.path in tree, f"{expected.path} is missing from the image"
        node = tree[expected.path]
        assert node.type == expected.type
        if expected.detail:
            assert (node.link or node.sha256) == expected.detail
        if expected.mode is not None:
            assert node.mode & 0o7777 == expected.mode
    for path in case.absent:
        assert path not in tree
    landed = [f"{x.path} is a {tree[x.path].type} {oct(tree[x.path].mode & 0o7777)}"
              for x in case.lands]
    record_property("outcome", f"built {result.image_id[:12]}; " + "; ".join(
        landed + [f"{path} dropped" for path in case.absent]))
    assert all(node.uid == 0 and node.gid == 0 for node in tree.values())
    assert all(node.type in ("file", "dir", "symlink") for node in tree.values())
    assert not [p for p, n in tree.items() if n.mode & 0o6000], "setuid/setgid must be cleared"
    meta_text = (tmp_path / "images" / result.meta_file).read_text()
    fields = parse_meta(meta_text)
    for key, values in case.meta.items():
        assert tuple(fields.get(key, ())) == values, key
    assert all(line.split(": ", 1)[0] in {"FORMAT", "ENTRY", "CMD", "WORKDIR", "ENV"}
               for line in meta_text.splitlines()), "a forged meta line"
    surroundings.check_untouched()


def test_committed_corpus_matches_the_generator() -> None:
    """tests/fixtures/hostile holds the corpus files; regenerate with
    `python -m tests.support.hostile_corpus tests/fixtures/hostile`."""
    expected = corpus_files()
    committed = {str(p.relative_to(FIXTURES)): p.read_bytes()
                 for p in FIXTURES.rglob("*") if p.is_file() and p.name != "README.md"}
    assert sorted(committed) == sorted(expected)
    stale = [name for name, data in expected.items() if committed[name] != data]
    assert stale == []
