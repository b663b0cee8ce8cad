"""Issue 4, registry faults end to end: a fault-injecting proxy (tests/support/proxy.py)
in front of a real docker-registry, pulled through the worker's Builder.

Retryable faults (resets, 5xx, 429, trickles) end in a correct image; the rest fail with
a clear cause within a bound set by the configured timeouts, and never hold a worker
slot beyond them. Elapsed times are recorded for docs/hostile-input-report.md.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from imagegw.cache.layout import WorkerPaths
from imagegw.domain import errors
from imagegw.domain.config import parse_config
from imagegw.domain.model import BuildJob, BuildResult
from imagegw.worker.build import Builder
from imagegw.worker.jobs import JobRegistry
from tests.support import layers as L
from tests.support.images import push_image
from tests.support.proxy import (
    MANIFEST_PATH,
    Fault,
    Held,
    RateLimited,
    RegistryProxy,
    Reply,
    Request,
    ResetMidBody,
    ServerErrors,
    SilentServer,
    Trickle,
)
from tests.support.services import refused_address
from tests.support.squashfs_tree import read_squashfs, sha256

PAYLOAD = random.Random(9).randbytes(3 * 1024 * 1024)
LAYER = L.layer(L.file("payload.bin", PAYLOAD), compression="none")


def builder_for(root: Path, locations: dict[str, str], **limits) -> Builder:
    config = parse_config({
        "CacheDirectory": str(root / "cache"), "ExpandDirectory": str(root / "expand"),
        "Locations": {name: {"url": url} for name, url in locations.items()},
        "Platforms": {"cluster": {"accesstype": "local",
                                  "local": {"imageDir": str(root / "images")}}},
        "Limits": {"httpTimeout": 5, "httpRetries": 4, **limits},
    })
    return Builder(config, WorkerPaths(config.cache_dir, config.expand_dir))


def build(builder: Builder, reference: str = "testreg/faults/app:1") -> BuildResult:
    return builder.build(BuildJob(job_id="faults", system="cluster", reference=reference),
                         lambda progress: None)


@pytest.fixture(scope="module")
def pushed(registry):
    return push_image(registry.url, "faults/app", "1", [LAYER])


@pytest.fixture
def proxy(registry):
    with RegistryProxy(registry.url) as running:
        yield running


def layer_path(pushed) -> str:
    return rf"/blobs/{pushed.layer_digests[0]}$"


def assert_image_is_complete(root: Path, result: BuildResult) -> None:
    tree = read_squashfs(root / "images" / result.image_file)
    assert tree["payload.bin"].sha256 == sha256(PAYLOAD)
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(
        [result.image_file, result.meta_file])
    assert list((root / "expand").iterdir()) == []


def assert_nothing_published(root: Path) -> None:
    images = root / "images"
    assert not images.exists() or list(images.iterdir()) == []
    assert list((root / "expand").iterdir()) == []
    assert list((root / "cache" / "blobs").rglob(".*")) == []


class RedirectTo(Fault):
    """Answers matching requests with 307 to `url`."""

    canned = True

    def __init__(self, url: str, path: str):
        super().__init__(path, times=None)
        self.url = url

    def apply(self, request: Request, reply: Reply | None) -> Reply:
        return Reply(307, [("Location", self.url)])


@pytest.fixture
def silent():
    server = SilentServer()
    yield server
    server.stop()


def test_connection_reset_mid_blob_resumes_with_a_range_request(
        tmp_path, proxy, pushed, record_property):
    proxy.faults.append(ResetMidBody(layer_path(pushed), after_bytes=1_500_000))
    started = time.monotonic()
    result = build(builder_for(tmp_path, {"testreg": proxy.url}))
    record_property("seconds", f"{time.monotonic() - started:.2f}")
    requests = [r for r in proxy.requests if r.path.endswith(pushed.layer_digests[0])]
    assert len(requests) == 2
    assert "range" not in requests[0].headers
    resumed_from = int(requests[1].headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= 1_500_000
    record_property("outcome", f"built; resumed with Range: bytes={resumed_from}-")
    assert_image_is_complete(tmp_path, result)


def test_5xx_burst_on_manifest_and_blob_is_retried_to_success(
        tmp_path, proxy, pushed, record_property):
    proxy.faults.append(ServerErrors(MANIFEST_PATH, status=502, times=2))
    proxy.faults.append(ServerErrors(layer_path(pushed), status=503, times=3))
    started = time.monotonic()
    result = build(builder_for(tmp_path, {"testreg": proxy.url}))
    record_property("seconds", f"{time.monotonic() - started:.2f}")
    assert proxy.count("GET", MANIFEST_PATH) == 3
    assert proxy.count("GET", layer_path(pushed)) == 4
    record_property("outcome", "built after 2 manifest 502s and 3 blob 503s")
    assert_image_is_complete(tmp_path, result)


def test_persistent_5xx_fails_as_unavailable_after_the_configured_attempts(
        tmp_path, proxy, pushed, record_property):
    proxy.faults.append(ServerErrors(layer_path(pushed), status=503, times=None))
    started = time.monotonic()
    with pytest.raises(errors.RegistryUnavailable, match="answered 503") as caught:
        build(builder_for(tmp_path, {"testreg": proxy.url}, httpRetries=3))
    elapsed = time.monotonic() - started
    record_property("outcome", f"{type(caught.value).__name__}: {caught.value}")
    record_property("seconds", f"{elapsed:.2f}")
    assert caught.value.retryable
    assert proxy.count("GET", layer_path(pushed)) == 3
    record_property("bound", "< 10 s (3 attempts, backoffs <= 0.5 s and 1 s)")
    assert elapsed < 10, "two backoffs of at most 1 s and 2 s"
    assert_nothing_published(tmp_path)


def test_429_waits_for_retry_after_then_succeeds(tmp_path, proxy, pushed, record_property):
    limited = RateLimited(layer_path(pushed), retry_after=2)
    proxy.faults.append(limited)
    started = time.monotonic()
    result = build(builder_for(tmp_path, {"testreg": proxy.url}))
    elapsed = time.monotonic() - started
    record_property("seconds", f"{elapsed:.2f}")
    record_property("outcome", "built after one 429 with Retry-After: 2")
    assert limited.hits == 1
    assert proxy.count("GET", layer_path(pushed)) == 2
    record_property("bound", ">= 2 s (Retry-After: 2)")
    assert elapsed >= 2.0, "Retry-After was not honoured"
    assert_image_is_complete(tmp_path, result)


def test_slow_trickle_within_the_timeout_completes(tmp_path, proxy, pushed, record_property):
    slow = Trickle(layer_path(pushed), chunk_size=256 * 1024, delay=0.1)
    proxy.faults.append(slow)
    started = time.monotonic()
    result = build(builder_for(tmp_path, {"testreg": proxy.url}, httpTimeout=2))
    elapsed = time.monotonic() - started
    record_property("seconds", f"{elapsed:.2f}")
    record_property("outcome", "built from 256 KiB chunks every 0.1 s (timeout 2 s)")
    assert slow.hits == 1
    assert proxy.count("GET", layer_path(pushed)) == 1, "a trickle is not a failure"
    assert_image_is_complete(tmp_path, result)


def test_blob_that_stalls_longer_than_the_timeout_fails_within_the_bound(
        tmp_path, proxy, pushed, record_property):
    proxy.faults.append(Trickle(layer_path(pushed), chunk_size=64 * 1024, delay=5, times=None))
    started = time.monotonic()
    with pytest.raises(errors.RegistryUnavailable) as caught:
        build(builder_for(tmp_path, {"testreg": proxy.url}, httpTimeout=1, httpRetries=2))
    elapsed = time.monotonic() - started
    record_property("outcome", f"{type(caught.value).__name__}: {caught.value}"[:300])
    record_property("seconds", f"{elapsed:.2f}")
    assert "broke off" in str(caught.value)
    record_property("bound", "< 8 s (2 attempts x 1 s timeout + backoff, generously)")
    assert elapsed < 2 * 1 + 1 + 5, "2 attempts x 1 s timeout + one backoff, generously"
    assert_nothing_published(tmp_path)


def test_redirect_to_a_dead_host_fails_naming_it(tmp_path, proxy, pushed, record_property):
    dead = refused_address()
    proxy.faults.append(RedirectTo(f"http://{dead}/blob", layer_path(pushed)))
    started = time.monotonic()
    with pytest.raises(errors.RegistryUnavailable) as caught:
        build(builder_for(tmp_path, {"testreg": proxy.url}, httpRetries=2))
    elapsed = time.monotonic() - started
    record_property("outcome", f"{type(caught.value).__name__}: {caught.value}"[:300])
    record_property("seconds", f"{elapsed:.2f}")
    message = str(caught.value)
    assert f"cannot reach registry {dead}" in message
    assert f"the registry {proxy.host} redirected there" in message
    record_property("bound", "< 10 s (2 attempts, connection refused)")
    assert elapsed < 10
    assert_nothing_published(tmp_path)


def test_registry_that_never_answers_fails_within_the_timeout(
        tmp_path, silent, record_property):
    started = time.monotonic()
    with pytest.raises(errors.RegistryUnavailable) as caught:
        build(builder_for(tmp_path, {"testreg": silent.url}, httpTimeout=1, httpRetries=2))
    elapsed = time.monotonic() - started
    record_property("outcome", f"{type(caught.value).__name__}: {caught.value}"[:300])
    record_property("seconds", f"{elapsed:.2f}")
    assert silent.url.removeprefix("http://") in str(caught.value)
    assert "timed out" in str(caught.value).lower()
    assert len(silent.accepted) == 2, "one connection per attempt"
    record_property("bound", "1 s .. 8 s (2 attempts x 1 s timeout + backoff)")
    assert 1.0 <= elapsed < 2 * 1 + 1 + 5, "2 attempts x 1 s timeout + one backoff"
    assert_nothing_published(tmp_path)


def test_worker_slot_is_freed_when_a_silent_registry_times_out(
        tmp_path, silent, proxy, pushed, record_property):
    builder = builder_for(tmp_path, {"testreg": proxy.url, "silent": silent.url},
                          httpTimeout=1, httpRetries=2)
    jobs = JobRegistry(builder.build, slots=1)
    started = time.monotonic()
    stuck, _ = jobs.start_or_attach(BuildJob(job_id="stuck", system="cluster",
                                             reference="silent/faults/app:1"))
    waiting, _ = jobs.start_or_attach(BuildJob(job_id="waiting", system="cluster",
                                               reference="testreg/faults/app:1"))
    stuck_final = [event for event in stuck.watch(poll=0.2) if event.final][-1]
    stuck_seconds = time.monotonic() - started
    waiting_final = [event for event in waiting.watch(poll=0.2) if event.final][-1]
    total = time.monotonic() - started
    record_property("outcome", f"stuck job failed after {stuck_seconds:.1f}s; the queued job "
                    f"then built in {total - stuck_seconds:.1f}s")
    record_property("seconds", f"{total:.2f}")
    assert stuck_final.failure is not None
    assert "timed out" in stuck_final.failure.message.lower()
    record_property("bound", "stuck job < 8 s, then the slot is free")
    assert stuck_seconds < 2 * 1 + 1 + 5
    assert waiting_final.result is not None, waiting_final.failure
    assert jobs.active() == []
    assert_image_is_complete(tmp_path, waiting_final.result)


def test_a_conversion_that_fails_does_not_wait_for_the_other_downloads(
        tmp_path, proxy, registry, record_property):
    # The newest layer is refused as soon as it is read; the older one trickles in (all of
    # it would take ~10 s). Its download stops after the 1 MiB read in progress (~3 s here)
    # and is not cached.
    hostile = L.layer(L.raw_member("usr/../../etc/shadow", data=b"x"))
    pushed = push_image(registry.url, "faults/refused", "1", [LAYER, hostile])
    slow = Trickle(layer_path(pushed), chunk_size=64 * 1024, delay=0.2)
    proxy.faults.append(slow)
    started = time.monotonic()
    with pytest.raises(errors.ContentRejected, match="usr/../../etc/shadow") as caught:
        build(builder_for(tmp_path, {"testreg": proxy.url}), "testreg/faults/refused:1")
    record_property("seconds", f"{time.monotonic() - started:.2f}")
    record_property("outcome", f"{type(caught.value).__name__} for the newest layer; the "
                    "trickling older layer's download stopped, not cached")
    assert slow.hits == 1
    blobs = tmp_path / "cache" / "blobs" / "sha256"
    assert not (blobs / pushed.layer_digests[0].split(":", 1)[1]).exists(), \
        "the older layer was downloaded to the end after the conversion failed"
    assert_nothing_published(tmp_path)


# -- a layer read while it downloads ---------------------------------------------------


def tar2sqfs_bytes_read() -> int:
    """Bytes the tar2sqfs processes started by this test process have read so far."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1]
            if name != "tar2sqfs" or int(fields.split()[1]) != os.getpid():
                continue
            io = Path(f"/proc/{entry}/io").read_text()
        except (OSError, ValueError):
            continue  # gone meanwhile
        total += next(int(line.split()[1]) for line in io.splitlines()
                      if line.startswith("rchar:"))
    return total


def wait_for(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def build_through_hold(root: Path, proxy: RegistryProxy, held: Held
                       ) -> tuple[Builder, dict, bool]:
    """Builds while `held` holds the layer's download; returns the builder, the outcome
    ("result" or "error"), and whether tar2sqfs had read 1 MiB of the image before the
    hold was released."""
    proxy.faults.append(held)
    builder = builder_for(root, {"testreg": proxy.url}, httpTimeout=60)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = build(builder)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        converting = wait_for(lambda: tar2sqfs_bytes_read() >= 1 << 20)
        outcome["published early"] = (root / "images").exists()
    finally:
        held.release.set()
        thread.join(60)
    return builder, outcome, converting


HELD_AT = 2_500_000  # of the 3 MiB layer (uncompressed tar)


class HeldCorrupt(Held):
    """Held, and the byte at `flip` (after the hold) flipped: the sha256 is wrong."""

    def __init__(self, path: str, *, at: int, flip: int) -> None:
        super().__init__(path, at=at, times=None)
        self.flip = flip

    def apply(self, request: Request, reply: Reply | None) -> Reply:
        reply = super().apply(request, reply)
        at = self.flip % len(reply.body)
        reply.body = reply.body[:at] + bytes([reply.body[at] ^ 0xFF]) + reply.body[at + 1:]
        return reply


class HeldThenReset(Held):
    """Held, then reset a little later, by a server without ranges (the download restarts)."""

    def apply(self, request: Request, reply: Reply | None) -> Reply:
        reply = super().apply(request, reply)
        reply.cut_after = HELD_AT + 100_000
        reply.headers = [(k, v) for k, v in reply.headers if k.lower() != "accept-ranges"]
        return reply


def test_a_layer_is_converted_while_it_downloads(tmp_path, proxy, pushed, record_property):
    _, outcome, converting = build_through_hold(tmp_path, proxy,
                                                Held(layer_path(pushed), at=HELD_AT))
    assert not outcome["published early"], "published before the download ended"
    record_property("outcome", "tar2sqfs read 1 MiB of the image while the only layer's "
                    "download was held at 2.5 of 3 MB; then built")
    assert converting, "the conversion did not start before the layer was downloaded"
    assert "error" not in outcome, outcome.get("error")
    assert_image_is_complete(tmp_path, outcome["result"])


@pytest.mark.parametrize(("at", "flip"), [(HELD_AT, HELD_AT + 200_000), (-1, -1)],
                         ids=["file data", "tar padding"])
def test_a_corrupt_layer_read_while_it_downloads_is_refused_and_nothing_kept(
        tmp_path, proxy, pushed, record_property, at, flip):
    # A byte of file data: the flatten reads it, the digest fails at the layer's end.
    # The last byte, in the padding after the tar's end, held back: the flatten never
    # needs it, and has the layer's whole index before the digest is known. Neither the
    # index nor the image may be kept.
    builder, outcome, converting = build_through_hold(
        tmp_path, proxy, HeldCorrupt(layer_path(pushed), at=at, flip=flip))
    record_property("outcome", f"{type(outcome.get('error')).__name__}: "
                    f"{outcome.get('error')}"[:300])
    assert converting, "the conversion did not start before the layer was downloaded"
    # Its data had gone to tar2sqfs: the digest, checked at the layer's end, refuses it.
    assert isinstance(outcome.get("error"), errors.DigestMismatch), outcome
    assert_nothing_published(tmp_path)
    assert not builder.cache.path(pushed.layer_digests[0]).exists()
    assert builder.cache.sidecars(pushed.layer_digests[0]) == [], \
        "the index of an unverified layer was kept"


def test_a_download_that_restarts_while_read_is_converted_again(
        tmp_path, proxy, pushed, caplog, record_property):
    caplog.set_level("INFO", logger="imagegw.worker.build")
    builder, outcome, converting = build_through_hold(
        tmp_path, proxy, HeldThenReset(layer_path(pushed), at=HELD_AT))
    assert converting, "the conversion did not start before the layer was downloaded"
    requests = [r for r in proxy.requests if r.path.endswith(pushed.layer_digests[0])]
    assert len(requests) == 2 and "range" not in requests[1].headers, "no restart happened"
    assert "started over while it was being read" in caplog.text
    record_property("outcome", "the download restarted after 2.6 MB were read; converted "
                    "again from the complete blob")
    assert "error" not in outcome, outcome.get("error")
    assert_image_is_complete(tmp_path, outcome["result"])
    assert builder.cache.sidecars(pushed.layer_digests[0]) != [], "the index was not kept"

