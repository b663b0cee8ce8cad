"""Issue 18: a pull's progress watched from an asyncio loop (`imagegw.gateway.aio.watch_pull`),
on a real SQLite store and in-process hub: events published by other threads wake the
watchers, which hold no thread while they wait."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegw.domain.config import parse_config
from imagegw.domain.model import ImageMetadata, ImageState, Progress, Stage
from imagegw.gateway.aio import Blocking, EventLoopThread, watch_pull
from imagegw.gateway.core import pulls as pulls_module
from imagegw.gateway.core.access import ANONYMOUS_CALLER
from imagegw.gateway.core.pulls import PullManager, PullRequest, PullTicket, progress_event
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


@pytest.fixture
def blocking() -> Iterator[Blocking]:
    pools = Blocking(2)
    yield pools
    pools.shutdown()


def finish(store: SqliteImageStore, hub: MemoryProgressHub, ticket: PullTicket) -> None:
    """What the dispatcher does when a worker reports the image published."""
    image_id = "a" * 64
    image = ImageRecord(
        system=SYSTEM, image_id=image_id, format="squashfs", manifest_digest="sha256:" + "1" * 64,
        metadata=ImageMetadata(), image_file=f"{image_id}.squashfs", meta_file=f"{image_id}.meta",
        size_bytes=4, tags=(ticket.key.reference,), last_pull=1.0, last_used=1.0)
    assert store.complete_pull(ticket.key, ticket.job_id, image, time.time())
    hub.publish(ticket.job_id, ProgressEvent.ended())


def test_an_async_watcher_gets_progress_from_another_thread_and_ends_ready(world, blocking):
    pulls, store, hub = world
    ticket = pulls.request_pull(PullRequest(SYSTEM, REFERENCE), ANONYMOUS_CALLER)

    async def watch() -> list:
        seen = []
        async with contextlib.aclosing(watch_pull(pulls, ticket, blocking)) as statuses:
            async for status in statuses:
                seen.append(status)
                if len(seen) == 1:
                    threading.Thread(target=hub.publish, args=(ticket.job_id, progress_event(
                        ImageState.PULLING, Progress(Stage.DOWNLOADING, 1, 2, 10, 20)))).start()
                elif len(seen) == 2:
                    threading.Thread(target=finish, args=(store, hub, ticket)).start()
        return seen

    seen = asyncio.run(asyncio.wait_for(watch(), 10))
    assert [status.state for status in seen] == [ImageState.QUEUED, ImageState.PULLING,
                                                 ImageState.READY]
    assert seen[1].progress == Progress(Stage.DOWNLOADING, 1, 2, 10, 20)


def test_many_async_watchers_wait_without_a_thread_each_and_all_end(world, blocking):
    pulls, store, hub = world
    ticket = pulls.request_pull(PullRequest(SYSTEM, REFERENCE), ANONYMOUS_CALLER)
    loop = EventLoopThread("test-loop")
    loop.start()
    started = asyncio.Event()

    async def watch() -> ImageState | None:
        last: ImageState | None = None
        async with contextlib.aclosing(watch_pull(pulls, ticket, blocking)) as statuses:
            async for status in statuses:
                last = status.state
        return last

    async def watch_all() -> list:
        tasks = [asyncio.create_task(watch()) for _ in range(300)]
        await asyncio.sleep(0.5)
        started.set()
        return await asyncio.gather(*tasks)

    try:
        before = threading.active_count()
        outcome = loop.submit(watch_all())
        deadline = time.monotonic() + 10
        while not started.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        # 300 watchers wait: the loop's thread and the two pool threads, nothing more.
        assert threading.active_count() <= before + blocking.threads
        finish(store, hub, ticket)
        assert outcome.result(10) == [ImageState.READY] * 300
        # Every subscription is closed (off the loop, by the pool, just after each end).
        deadline = time.monotonic() + 10
        while hub._subscribers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not hub._subscribers
    finally:
        loop.stop()


def test_a_watcher_that_goes_away_closes_its_subscription(world, blocking):
    pulls, _store, hub = world
    ticket = pulls.request_pull(PullRequest(SYSTEM, REFERENCE), ANONYMOUS_CALLER)

    async def leave_early() -> None:
        async with contextlib.aclosing(watch_pull(pulls, ticket, blocking)) as statuses:
            async for status in statuses:
                assert status.state == ImageState.QUEUED
                break

    asyncio.run(leave_early())
    deadline = time.monotonic() + 5
    while hub._subscribers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not hub._subscribers


def test_a_quiet_spell_never_moves_the_bar_back_to_the_records_older_progress(
        world, blocking, monkeypatch):
    # The dispatcher writes progress to the records once a second, events go out always:
    # when no event comes for WATCH_POLL_SECONDS the stream re-reads the records, which
    # may hold less than the events already said (a bar that jumped back every 2 s).
    # Progress the records hold beyond it (the broker away) is still said.
    monkeypatch.setattr(pulls_module, "WATCH_POLL_SECONDS", 0.2)
    pulls, store, hub = world
    ticket = pulls.request_pull(PullRequest(SYSTEM, REFERENCE), ANONYMOUS_CALLER)
    older = Progress(Stage.DOWNLOADING, 1, 2, 10, 100)
    newer = Progress(Stage.DOWNLOADING, 2, 2, 60, 100)
    ahead = Progress(Stage.DOWNLOADING, 2, 2, 90, 100)

    def later(seconds: float, act) -> None:
        threading.Timer(seconds, act).start()

    async def watch() -> list:
        seen = []
        async with contextlib.aclosing(watch_pull(pulls, ticket, blocking)) as statuses:
            async for status in statuses:
                seen.append(status)
                if len(seen) == 1:
                    store.update_pull(ticket.key, ticket.job_id, ImageState.PULLING, older,
                                      time.time())
                    hub.publish(ticket.job_id, progress_event(ImageState.PULLING, newer))
                    # Two quiet spells on the older records, then the records move on.
                    later(0.7, lambda: store.update_pull(
                        ticket.key, ticket.job_id, ImageState.PULLING, ahead, time.time()))
                    later(1.4, lambda: finish(store, hub, ticket))
        return seen

    seen = asyncio.run(asyncio.wait_for(watch(), 10))
    done = [status.progress.bytes_done for status in seen
            if status.state == ImageState.PULLING and status.progress is not None]
    assert done == [60, 90]
    assert seen[-1].state == ImageState.READY
