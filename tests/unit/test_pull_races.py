"""Pulls racing the end of a job, on a real SQLite store and in-process queue and hub:
many users pull one image while its job finishes (the benchmark's 100 concurrent pulls
once saw 5 streams end QUEUED, and new jobs start for an image READY a moment before)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegw.domain.config import parse_config
from imagegw.domain.model import ImageMetadata, ImageState
from imagegw.gateway.core.access import ANONYMOUS_CALLER
from imagegw.gateway.core.pulls import PullManager, PullRequest, PullTicket
from imagegw.gateway.queue import MemoryJobQueue, MemoryProgressHub, ProgressEvent
from imagegw.gateway.records import ImageRecord
from imagegw.gateway.store import SqliteImageStore

SYSTEM = "cluster"
REFERENCE = "app:1"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[PullManager, SqliteImageStore, MemoryProgressHub]]:
    config = parse_config({"Platforms": {SYSTEM: {
        "accesstype": "local", "local": {"imageDir": str(tmp_path / "img")}}}},
        data_dir=str(tmp_path / "data"))
    store = SqliteImageStore(str(tmp_path / "records.sqlite3"))
    hub = MemoryProgressHub()
    yield PullManager(config, store, MemoryJobQueue(), hub), store, hub
    store.close()


def complete(store: SqliteImageStore, ticket: PullTicket) -> None:
    """The store side of a finished job: the pull READY now, with its image."""
    image_id = "a" * 64
    image = ImageRecord(
        system=SYSTEM, image_id=image_id, format="squashfs", manifest_digest="sha256:" + "1" * 64,
        metadata=ImageMetadata(), image_file=f"{image_id}.squashfs", meta_file=f"{image_id}.meta",
        size_bytes=4, tags=(ticket.key.reference,), last_pull=1.0, last_used=1.0)
    assert store.complete_pull(ticket.key, ticket.job_id, image, time.time())


def finish(store: SqliteImageStore, hub: MemoryProgressHub, ticket: PullTicket) -> None:
    """What the dispatcher does when a worker reports the image published."""
    complete(store, ticket)
    hub.publish(ticket.job_id, ProgressEvent.ended())


def test_a_stream_ends_ready_when_its_job_does(world) -> None:
    pulls, store, hub = world
    ticket = pulls.request_pull(PullRequest(SYSTEM, REFERENCE), ANONYMOUS_CALLER)
    stream = pulls.watch(ticket, alive=lambda: True)
    assert next(stream).state == ImageState.QUEUED
    finish(store, hub, ticket)
    assert [status.state for status in stream] == [ImageState.READY]


def test_a_stream_whose_job_ends_as_a_newer_one_begins_follows_the_newer_one(world) -> None:
    pulls, store, hub = world
    first = pulls.request_pull(PullRequest(SYSTEM, REFERENCE), ANONYMOUS_CALLER)
    stream = pulls.watch(first, alive=lambda: True)
    assert next(stream).state == ImageState.QUEUED
    # The job finishes, and before this stream reads the record another caller's pull
    # (here a forced one) starts the next job of the same (system, reference).
    complete(store, first)
    second = pulls.request_pull(PullRequest(SYSTEM, REFERENCE, force=True), ANONYMOUS_CALLER)
    assert second.started and second.job_id != first.job_id
    hub.publish(first.job_id, ProgressEvent.ended())
    # The stream does not end on the newer job's QUEUED state: it follows that job.
    following = next(stream)
    assert following.state == ImageState.QUEUED and following.pull.job_id == second.job_id
    finish(store, hub, second)
    assert [status.state for status in stream] == [ImageState.READY]


def test_a_pull_that_finds_a_job_ending_is_answered_by_it_without_a_new_job(world) -> None:
    pulls, store, hub = world
    first = pulls.request_pull(PullRequest(SYSTEM, REFERENCE), ANONYMOUS_CALLER)
    in_flight = store.get_pull(first.key)
    finish(store, hub, first)
    # The next caller read the record while the job was still running, and reaches the
    # store after it finished: the READY image answers it, no second job starts.
    real_get_pull = store.get_pull
    reads = iter([in_flight])
    store.get_pull = lambda key: next(reads, None) or real_get_pull(key)
    ticket = pulls.request_pull(PullRequest(SYSTEM, REFERENCE), ANONYMOUS_CALLER)
    assert ticket.fresh and not ticket.started and ticket.job_id == first.job_id
    assert ticket.answer is not None and ticket.answer.state == ImageState.READY
    assert store.get_pull(first.key).job_id == first.job_id  # no job was queued


def test_a_fresh_answer_stays_ready_when_another_caller_starts_a_job(world) -> None:
    pulls, store, hub = world
    first = pulls.request_pull(PullRequest(SYSTEM, REFERENCE), ANONYMOUS_CALLER)
    finish(store, hub, first)
    fresh = pulls.request_pull(PullRequest(SYSTEM, REFERENCE), ANONYMOUS_CALLER)
    forced = pulls.request_pull(PullRequest(SYSTEM, REFERENCE, force=True), ANONYMOUS_CALLER)
    assert forced.started
    # What the fresh caller is answered was decided before: READY, not the new QUEUED.
    assert fresh.answer is not None and fresh.answer.state == ImageState.READY
