"""The ImageStore contract, run over SQLite, MongoDB on mongomock-ng and (when
IMAGEGW_TEST_MONGODB_URI is set) a real MongoDB."""

# Fixtures are imported explicitly (no conftest), so test arguments shadow them.

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path

import pymongo
import pytest

from imagegw.domain.config import Config
from imagegw.domain.errors import ConfigError, InvalidRequest
from imagegw.domain.model import Failure, ImageMetadata, ImageState, Progress, Stage
from imagegw.gateway.records import ImageRecord, PullKey
from imagegw.gateway.store import (
    ImageStore,
    MongoImageStore,
    SqliteImageStore,
    StoreUnavailable,
    open_store,
)
from tests.support.redis_server import free_port

KEY = PullKey("cluster", "docker.io/library/ubuntu:22.04")


@pytest.fixture
def real_mongodb_uri() -> str | None:
    return os.environ.get("IMAGEGW_TEST_MONGODB_URI")


def make_image(image_id: str, *, system: str = "cluster", tags: tuple[str, ...] = (),
               last_pull: float = 100.0, state: ImageState = ImageState.READY,
               acl_key: str = "") -> ImageRecord:
    return ImageRecord(
        system=system, image_id=image_id, format="squashfs",
        manifest_digest="sha256:" + image_id.ljust(64, "0")[:64],
        metadata=ImageMetadata(env=("PATH=/usr/bin",), entrypoint=("/bin/sh",),
                               cmd=("-c", "true"), workdir="/w", user="1000",
                               labels={"org.example": "yes"}),
        image_file=f"/images/{image_id}.squashfs", meta_file=f"/images/{image_id}.meta",
        size_bytes=4096, tags=tags, state=state, user_acl=(1000,), group_acl=(100,),
        acl_key=acl_key, last_pull=last_pull, last_used=last_pull, extra={"k": "v"},
    )


def pull_to_ready(store: ImageStore, key: PullKey, job_id: str, image_id: str,
                  now: float) -> ImageRecord:
    record, started = store.begin_pull(key, job_id, now)
    assert started, record
    image = make_image(image_id, system=key.system, last_pull=now, acl_key=key.acl_key)
    assert store.complete_pull(key, job_id, image, now)
    return image


# -- begin_pull ------------------------------------------------------------------------


def test_begin_pull_creates_a_queued_record(image_store: ImageStore) -> None:
    record, started = image_store.begin_pull(KEY, "job-1", 10.0, requester_uid=1000,
                                             user_acl=(1000,), group_acl=(100, 200))
    assert started
    assert record.state == ImageState.QUEUED and record.job_id == "job-1"
    assert (record.user_acl, record.group_acl, record.requester_uid) == ((1000,), (100, 200), 1000)
    assert record.created == record.updated == 10.0 and record.attempts == 0
    assert image_store.get_pull(KEY) == record


def test_unknown_pull_reads_as_none(image_store: ImageStore) -> None:
    assert image_store.get_pull(KEY) is None


def test_begin_pull_while_in_flight_returns_the_running_record(image_store: ImageStore) -> None:
    image_store.begin_pull(KEY, "job-1", 10.0)
    image_store.update_pull(KEY, "job-1", ImageState.PULLING, None, 11.0)
    record, started = image_store.begin_pull(KEY, "job-2", 12.0)
    assert not started
    assert record.job_id == "job-1" and record.state == ImageState.PULLING


def test_begin_pull_keeps_a_pull_that_became_ready_after_the_given_time(
        image_store: ImageStore) -> None:
    # A pull finished at 10.0: a caller that counts images READY after 5.0 as fresh is
    # answered by it; one that needs them READY after 10.0 (or anything: None) restarts it.
    pull_to_ready(image_store, KEY, "job-1", "img-a", 10.0)
    record, started = image_store.begin_pull(KEY, "job-2", 11.0, keep_ready_since=5.0)
    assert not started and record.state == ImageState.READY and record.job_id == "job-1"
    assert record.image_id == "img-a"
    record, started = image_store.begin_pull(KEY, "job-3", 11.0, keep_ready_since=10.0)
    assert started and record.job_id == "job-3"
    image_store.fail_pull(KEY, "job-3", Failure("RegistryUnavailable", "registry down"), 12.0)
    # A failed pull is never kept, whatever the time.
    record, started = image_store.begin_pull(KEY, "job-4", 13.0, keep_ready_since=0.0)
    assert started and record.job_id == "job-4"


def test_only_one_of_twenty_concurrent_begin_pulls_starts_the_pull(
    image_store: ImageStore,
) -> None:
    barrier = threading.Barrier(20)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def start(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            record, started = image_store.begin_pull(KEY, f"job-{n}", 10.0)
            with lock:
                results.append((record.job_id, started))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    winners = [job for job, started in results if started]
    assert len(results) == 20 and len(winners) == 1
    assert {job for job, _ in results} == {winners[0]}
    assert image_store.get_pull(KEY).job_id == winners[0]  # type: ignore[union-attr]


def test_failed_pull_restarts_with_a_fresh_record(image_store: ImageStore) -> None:
    image_store.begin_pull(KEY, "job-1", 10.0)
    image_store.note_attempt(KEY, "job-1", 11.0)
    image_store.fail_pull(KEY, "job-1", Failure("RegistryUnavailable", "registry down"), 12.0)
    record, started = image_store.begin_pull(KEY, "job-2", 20.0, requester_uid=7)
    assert started
    assert record.state == ImageState.QUEUED and record.job_id == "job-2"
    assert record.failure is None and record.attempts == 0 and record.requester_uid == 7
    assert record.created == 10.0 and record.updated == 20.0


def test_ready_pull_restarts_keeping_the_current_image(image_store: ImageStore) -> None:
    pull_to_ready(image_store, KEY, "job-1", "img-a", 10.0)
    record, started = image_store.begin_pull(KEY, "job-2", 20.0)
    assert started and record.state == ImageState.QUEUED
    assert record.image_id == "img-a" and record.ready_time == 10.0


# -- job_id guards ---------------------------------------------------------------------


def test_superseded_job_cannot_change_the_pull(image_store: ImageStore) -> None:
    image_store.begin_pull(KEY, "job-1", 10.0)
    image_store.fail_pull(KEY, "job-1", Failure("ConversionFailed", "boom"), 11.0)
    image_store.begin_pull(KEY, "job-2", 12.0)

    assert not image_store.update_pull(KEY, "job-1", ImageState.PULLING, None, 13.0)
    assert image_store.note_attempt(KEY, "job-1", 13.0) == 0
    assert not image_store.complete_pull(KEY, "job-1", make_image("img-old"), 13.0)
    assert not image_store.fail_pull(KEY, "job-1", Failure("ConversionFailed", "late"), 13.0)
    assert not image_store.refresh_pull(KEY, "job-1", 13.0)

    record = image_store.get_pull(KEY)
    assert record is not None
    assert (record.state, record.job_id, record.updated) == (ImageState.QUEUED, "job-2", 12.0)
    assert image_store.get_image("cluster", "img-old") is None


def test_finished_job_cannot_change_the_pull_again(image_store: ImageStore) -> None:
    pull_to_ready(image_store, KEY, "job-1", "img-a", 10.0)
    assert not image_store.fail_pull(KEY, "job-1", Failure("ConversionFailed", "late"), 11.0)
    assert not image_store.update_pull(KEY, "job-1", ImageState.PULLING, None, 11.0)
    record = image_store.get_pull(KEY)
    assert record is not None and record.state == ImageState.READY


def test_update_pull_records_state_and_progress(image_store: ImageStore) -> None:
    image_store.begin_pull(KEY, "job-1", 10.0)
    progress = Progress(Stage.DOWNLOADING, layer_index=2, layer_count=5, bytes_done=100,
                        bytes_total=1000, message="layer 2 of 5")
    assert image_store.update_pull(KEY, "job-1", ImageState.PULLING, progress, 11.0)
    record = image_store.get_pull(KEY)
    assert record is not None
    assert (record.state, record.progress, record.updated) == (ImageState.PULLING, progress, 11.0)


def test_note_attempt_counts_each_start(image_store: ImageStore) -> None:
    image_store.begin_pull(KEY, "job-1", 10.0)
    assert image_store.note_attempt(KEY, "job-1", 11.0) == 1
    assert image_store.note_attempt(KEY, "job-1", 12.0) == 2
    record = image_store.get_pull(KEY)
    assert record is not None and (record.attempts, record.started) == (2, 12.0)


def test_failed_pull_keeps_its_cause_and_image(image_store: ImageStore) -> None:
    pull_to_ready(image_store, KEY, "job-1", "img-a", 10.0)
    image_store.begin_pull(KEY, "job-2", 20.0)
    assert image_store.fail_pull(KEY, "job-2", Failure("RegistryUnavailable", "registry unreachable"), 21.0)
    record = image_store.get_pull(KEY)
    assert record is not None
    assert record.state == ImageState.FAILED
    assert record.failure == Failure("RegistryUnavailable", "registry unreachable")
    assert record.image_id == "img-a"


def test_refresh_pull_makes_an_unchanged_image_ready_again(image_store: ImageStore) -> None:
    pull_to_ready(image_store, KEY, "job-1", "img-a", 10.0)
    image_store.begin_pull(KEY, "job-2", 500.0)
    assert image_store.refresh_pull(KEY, "job-2", 501.0)
    record = image_store.get_pull(KEY)
    assert record is not None
    assert (record.state, record.ready_time, record.image_id) == (ImageState.READY, 501.0,
                                                                  "img-a")


# -- images and tags -------------------------------------------------------------------


def test_complete_pull_stores_the_image_and_points_the_reference_at_it(
    image_store: ImageStore,
) -> None:
    image = pull_to_ready(image_store, KEY, "job-1", "img-a", 10.0)
    record = image_store.get_pull(KEY)
    assert record is not None
    assert (record.state, record.image_id, record.ready_time) == (ImageState.READY, "img-a", 10.0)
    stored = image_store.get_image("cluster", "img-a")
    assert stored == replace(image, tags=(KEY.reference,))


def test_tag_moves_to_the_newest_image_and_the_old_id_stays_resolvable(
    image_store: ImageStore,
) -> None:
    pull_to_ready(image_store, KEY, "job-1", "img-old", 10.0)
    image_store.begin_pull(KEY, "job-2", 20.0)
    image_store.complete_pull(KEY, "job-2", make_image("img-new", last_pull=20.0), 20.0)

    old = image_store.get_image("cluster", "img-old")
    new = image_store.get_image("cluster", "img-new")
    assert old is not None and old.tags == ()
    assert new is not None and new.tags == (KEY.reference,)
    assert image_store.get_pull(KEY).image_id == "img-new"  # type: ignore[union-attr]


def test_an_image_keeps_the_union_of_its_tags(image_store: ImageStore) -> None:
    latest = PullKey("cluster", "docker.io/library/ubuntu:latest")
    pull_to_ready(image_store, KEY, "job-1", "img-a", 10.0)
    image_store.begin_pull(latest, "job-2", 20.0)
    image_store.complete_pull(latest, "job-2", make_image("img-a", tags=("extra:tag",)), 20.0)
    image = image_store.get_image("cluster", "img-a")
    assert image is not None
    assert set(image.tags) == {KEY.reference, latest.reference, "extra:tag"}
    assert len(image.tags) == 3


def test_tag_move_leaves_images_of_other_acl_keys_and_systems_alone(
    image_store: ImageStore,
) -> None:
    private = PullKey("cluster", KEY.reference, acl_key="u1000")
    elsewhere = PullKey("other", KEY.reference)
    pull_to_ready(image_store, private, "job-p", "img-private", 5.0)
    pull_to_ready(image_store, elsewhere, "job-o", "img-old", 6.0)
    pull_to_ready(image_store, KEY, "job-1", "img-public", 10.0)
    assert image_store.get_image("cluster", "img-private", "u1000").tags == (KEY.reference,)  # type: ignore[union-attr]
    assert image_store.get_image("other", "img-old").tags == (KEY.reference,)  # type: ignore[union-attr]


def test_touch_image_records_the_last_use(image_store: ImageStore) -> None:
    pull_to_ready(image_store, KEY, "job-1", "img-a", 10.0)
    image_store.touch_image("cluster", "img-a", 99.0)
    image = image_store.get_image("cluster", "img-a")
    assert image is not None and (image.last_used, image.last_pull) == (99.0, 10.0)


def test_set_image_state_changes_only_existing_images(image_store: ImageStore) -> None:
    pull_to_ready(image_store, KEY, "job-1", "img-a", 10.0)
    assert image_store.set_image_state("cluster", "img-a", ImageState.EXPIRED)
    assert image_store.get_image("cluster", "img-a").state == ImageState.EXPIRED  # type: ignore[union-attr]
    assert not image_store.set_image_state("cluster", "img-missing", ImageState.EXPIRED)


# -- public and private copies --------------------------------------------------------

PRIVATE = PullKey("cluster", KEY.reference, acl_key="u:1000;g:")


def make_private(image_id: str, *, users: tuple[int, ...] = (1000,), groups: tuple[int, ...] = (),
                 last_pull: float = 100.0) -> ImageRecord:
    return replace(make_image(image_id, last_pull=last_pull), user_acl=users, group_acl=groups,
                   acl_key=f"u:{','.join(map(str, users))};g:{','.join(map(str, groups))}",
                   image_file=f"/images/{image_id}-p.squashfs", meta_file=f"/images/{image_id}-p.meta")


def test_public_and_private_copies_of_one_image_are_separate_records(
    image_store: ImageStore,
) -> None:
    public = pull_to_ready(image_store, KEY, "job-pub", "img-a", 10.0)
    image_store.begin_pull(PRIVATE, "job-priv", 11.0)
    private = make_private("img-a", last_pull=11.0)
    assert image_store.complete_pull(PRIVATE, "job-priv", private, 11.0)

    assert image_store.get_image("cluster", "img-a") == replace(public, tags=(KEY.reference,))
    assert image_store.get_image("cluster", "img-a", PRIVATE.acl_key) == replace(
        private, tags=(KEY.reference,))
    assert {i.acl_key for i in image_store.find_images("cluster", "img-a")} == {"", PRIVATE.acl_key}
    image_store.touch_image("cluster", "img-a", 50.0, PRIVATE.acl_key)
    assert image_store.get_image("cluster", "img-a").last_used == 10.0  # type: ignore[union-attr]
    assert {p.key for p in image_store.pulls_of("cluster", KEY.reference)} == {KEY, PRIVATE}


def test_list_images_shows_a_viewer_public_images_and_private_ones_naming_them(
    image_store: ImageStore,
) -> None:
    pull_to_ready(image_store, KEY, "job-pub", "img-public", 10.0)
    for n, (users, groups) in enumerate([((1000,), ()), ((2000,), (300,)), ((2000,), ())]):
        key = PullKey("cluster", f"private:{n}", acl_key=f"k{n}")
        image_store.begin_pull(key, f"job-{n}", 20.0 + n)
        image = replace(make_private(f"img-p{n}", users=users, groups=groups,
                                     last_pull=20.0 + n), acl_key=f"k{n}")
        image_store.complete_pull(key, f"job-{n}", image, 20.0 + n)

    def ids(viewer: tuple[int, tuple[int, ...]] | None) -> list[str]:
        images, _ = image_store.list_images("cluster", None, 100, "", viewer)
        return [image.image_id for image in images]

    assert ids((1000, (100,))) == ["img-p0", "img-public"]
    assert ids((1001, (300, 5))) == ["img-p1", "img-public"]
    assert ids((-1, ())) == ["img-public"]
    assert ids(None) == ["img-p2", "img-p1", "img-p0", "img-public"]


def test_paging_separates_public_and_private_copies_pulled_at_the_same_time(
    image_store: ImageStore,
) -> None:
    pull_to_ready(image_store, KEY, "job-pub", "img-a", 10.0)
    image_store.begin_pull(PRIVATE, "job-priv", 10.0)
    image_store.complete_pull(PRIVATE, "job-priv", make_private("img-a", last_pull=10.0), 10.0)
    first, token = image_store.list_images("cluster", None, 1, "")
    second, last = image_store.list_images("cluster", None, 1, token)
    assert [(i.image_id, i.acl_key) for i in first + second] == [("img-a", ""),
                                                                   ("img-a", PRIVATE.acl_key)]
    assert last == ""


def test_page_tokens_without_an_acl_key_are_still_accepted(image_store: ImageStore) -> None:
    import base64
    import json

    from imagegw.gateway.store import paging

    expected = add_images(image_store, 3)
    old = base64.urlsafe_b64encode(json.dumps([3.0, expected[0]]).encode()).decode()
    images, _ = image_store.list_images("cluster", None, 10, old)
    assert [i.image_id for i in images] == expected[1:]
    assert paging.decode_token(old) == paging.Cursor(3.0, expected[0], "")


# -- expiry ----------------------------------------------------------------------------


def test_expire_image_expires_only_ready_images_unused_since_the_cutoff(
    image_store: ImageStore,
) -> None:
    pull_to_ready(image_store, KEY, "job-1", "img-a", 10.0)
    image_store.touch_image("cluster", "img-a", 50.0)
    assert image_store.expire_image("cluster", "img-a", "", used_before=50.0) is None
    expired = image_store.expire_image("cluster", "img-a", "", used_before=51.0)
    assert expired is not None and expired.state == ImageState.READY  # as it was
    assert image_store.get_image("cluster", "img-a").state == ImageState.EXPIRED  # type: ignore[union-attr]
    assert image_store.expire_image("cluster", "img-a", "") is None
    assert image_store.expire_image("cluster", "img-missing", "") is None


def test_expirable_images_lists_ready_images_unused_since_the_cutoff_oldest_first(
    image_store: ImageStore,
) -> None:
    add_images(image_store, 4)  # last used 1.0 .. 4.0
    image_store.set_image_state("cluster", "img-00", ImageState.EXPIRED)
    assert [i.image_id for i in image_store.expirable_images("cluster", 3.5)] == ["img-01",
                                                                                  "img-02"]
    assert image_store.expirable_images("other", 100.0) == []


# -- listing ---------------------------------------------------------------------------


def add_images(store: ImageStore, count: int, *, first_time: float = 1.0,
               prefix: str = "img") -> list[str]:
    """Images img-00.. with distinct last_pull times; returns ids newest first."""
    for n in range(count):
        key = PullKey("cluster", f"docker.io/library/{prefix}:{n}")
        now = first_time + n
        store.begin_pull(key, f"job-{n}", now)
        store.complete_pull(key, f"job-{n}", make_image(f"{prefix}-{n:02}", last_pull=now), now)
    return [f"{prefix}-{n:02}" for n in reversed(range(count))]


def all_pages(store: ImageStore, page_size: int, state: ImageState | None = None) -> list[str]:
    ids: list[str] = []
    token = ""
    for _ in range(100):
        images, token = store.list_images("cluster", state, page_size, token)
        assert len(images) <= page_size
        ids += [image.image_id for image in images]
        if not token:
            return ids
    raise AssertionError("paging never ended")


def test_list_images_pages_through_every_image_once_newest_first(
    image_store: ImageStore,
) -> None:
    expected = add_images(image_store, 7)
    assert all_pages(image_store, 3) == expected
    assert all_pages(image_store, 7) == expected
    assert all_pages(image_store, 100) == expected


def test_images_pulled_at_the_same_time_page_in_id_order(image_store: ImageStore) -> None:
    for image_id in ("img-c", "img-a", "img-b"):
        key = PullKey("cluster", f"ref-{image_id}")
        image_store.begin_pull(key, image_id, 5.0)
        image_store.complete_pull(key, image_id, make_image(image_id, last_pull=5.0), 5.0)
    assert all_pages(image_store, 1) == ["img-a", "img-b", "img-c"]


def test_list_images_page_tokens_are_stable_under_inserts(image_store: ImageStore) -> None:
    expected = add_images(image_store, 6)
    first, token = image_store.list_images("cluster", None, 3, "")
    add_images(image_store, 2, first_time=1000.0, prefix="new")  # newer: sort before the first page
    rest: list[str] = []
    while token:
        page, token = image_store.list_images("cluster", None, 3, token)
        rest += [image.image_id for image in page]
    assert [image.image_id for image in first] + rest == expected


def test_list_images_hides_expired_images_unless_asked_for(image_store: ImageStore) -> None:
    add_images(image_store, 3)
    image_store.set_image_state("cluster", "img-01", ImageState.EXPIRED)
    assert all_pages(image_store, 10) == ["img-02", "img-00"]
    assert all_pages(image_store, 10, ImageState.EXPIRED) == ["img-01"]
    assert all_pages(image_store, 10, ImageState.READY) == ["img-02", "img-00"]


def test_list_images_lists_only_the_requested_system(image_store: ImageStore) -> None:
    add_images(image_store, 2)
    images, token = image_store.list_images("other", None, 10, "")
    assert (images, token) == ([], "")


def test_list_images_rejects_a_forged_page_token(image_store: ImageStore) -> None:
    add_images(image_store, 2)
    with pytest.raises(InvalidRequest):
        image_store.list_images("cluster", None, 10, "not-a-token")
    with pytest.raises(InvalidRequest):
        image_store.list_images("cluster", None, -1, "")


def test_in_flight_pulls_lists_only_running_pulls(image_store: ImageStore) -> None:
    queued, converting = PullKey("cluster", "a:1"), PullKey("cluster", "b:1")
    ready, failed = PullKey("cluster", "c:1"), PullKey("other", "d:1")
    image_store.begin_pull(queued, "j-q", 1.0)
    image_store.begin_pull(converting, "j-c", 2.0)
    image_store.update_pull(converting, "j-c", ImageState.CONVERTING, None, 3.0)
    pull_to_ready(image_store, ready, "j-r", "img-r", 4.0)
    image_store.begin_pull(failed, "j-f", 5.0)
    image_store.fail_pull(failed, "j-f", Failure("InternalError", "x"), 6.0)
    assert {r.key for r in image_store.in_flight_pulls()} == {queued, converting}


def test_list_pulls_orders_newest_update_first(image_store: ImageStore) -> None:
    a, b, c = PullKey("cluster", "a:1"), PullKey("cluster", "b:1"), PullKey("other", "c:1")
    image_store.begin_pull(a, "j-a", 1.0)
    image_store.begin_pull(b, "j-b", 2.0)
    image_store.begin_pull(c, "j-c", 3.0)
    image_store.update_pull(a, "j-a", ImageState.PULLING, None, 4.0)
    assert [r.key for r in image_store.list_pulls()] == [a, c, b]
    assert [r.key for r in image_store.list_pulls("cluster")] == [a, b]


def test_ping_reports_a_healthy_store(image_store: ImageStore) -> None:
    assert image_store.ping()


# -- backend-specific ------------------------------------------------------------------


def test_sqlite_records_survive_closing_and_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "imagegw.sqlite3")
    store = SqliteImageStore(path)
    image = pull_to_ready(store, KEY, "job-1", "img-a", 10.0)
    running = PullKey("cluster", "b:1")
    store.begin_pull(running, "job-2", 11.0)
    store.close()

    reopened = SqliteImageStore(path)
    try:
        assert reopened.get_image("cluster", "img-a") == replace(image, tags=(KEY.reference,))
        assert [r.key for r in reopened.in_flight_pulls()] == [running]
        assert reopened.get_pull(KEY).state == ImageState.READY  # type: ignore[union-attr]
    finally:
        reopened.close()


def test_sqlite_schema_version_1_is_upgraded_keeping_its_images(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "imagegw.sqlite3"
    store = SqliteImageStore(str(path))
    image = pull_to_ready(store, KEY, "job-1", "img-a", 10.0)
    store.close()
    # Turn the file back into version 1: images keyed by (system, image_id) only.
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE images RENAME TO new_images")
        conn.execute(
            "CREATE TABLE images (system TEXT NOT NULL, image_id TEXT NOT NULL, format TEXT NOT"
            " NULL, manifest_digest TEXT NOT NULL, metadata TEXT NOT NULL, image_file TEXT NOT"
            " NULL, meta_file TEXT NOT NULL, size_bytes INTEGER NOT NULL, tags TEXT NOT NULL"
            " DEFAULT '[]', state INTEGER NOT NULL, user_acl TEXT NOT NULL DEFAULT '[]',"
            " group_acl TEXT NOT NULL DEFAULT '[]', acl_key TEXT NOT NULL DEFAULT '',"
            " last_pull REAL NOT NULL DEFAULT 0, last_used REAL NOT NULL DEFAULT 0,"
            " extra TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (system, image_id))")
        conn.execute("INSERT INTO images SELECT * FROM new_images")
        conn.execute("DROP TABLE new_images")
        conn.execute("UPDATE schema_version SET version = 1")
    conn.close()

    upgraded = SqliteImageStore(str(path))
    try:
        assert upgraded.get_image("cluster", "img-a") == replace(image, tags=(KEY.reference,))
        upgraded.begin_pull(PRIVATE, "job-p", 20.0)
        assert upgraded.complete_pull(PRIVATE, "job-p", make_private("img-a"), 20.0)
        assert len(upgraded.find_images("cluster", "img-a")) == 2
    finally:
        upgraded.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (2,)
    conn.close()


def test_sqlite_store_in_an_unwritable_place_raises_store_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable) as caught:
        SqliteImageStore(str(tmp_path / "missing-dir" / "imagegw.sqlite3"))
    assert caught.value.retryable and caught.value.hint


def test_unreachable_mongodb_raises_store_unavailable_and_fails_ping() -> None:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        f"mongodb://127.0.0.1:{free_port()}/", serverSelectionTimeoutMS=200,
        connectTimeoutMS=200, connect=False)
    store = MongoImageStore(client, "imagegw_test")
    try:
        with pytest.raises(StoreUnavailable) as caught:
            store.get_pull(KEY)
        assert caught.value.retryable
        assert not store.ping()
    finally:
        store.close()


def test_open_store_uses_sqlite_in_the_data_directory(tmp_path: Path) -> None:
    store = open_store(Config(data_dir=str(tmp_path / "data")))
    try:
        assert isinstance(store, SqliteImageStore)
        assert (tmp_path / "data" / "imagegw.sqlite3").exists()
    finally:
        store.close()


def test_open_store_uses_mongodb_when_configured_without_connecting() -> None:
    config = Config(mongodb_uri=f"mongodb://127.0.0.1:{free_port()}/", mongodb_name="Shifter")
    store = open_store(config)
    try:
        assert isinstance(store, MongoImageStore)
    finally:
        store.close()


def test_open_store_without_data_directory_or_mongodb_names_the_key() -> None:
    with pytest.raises(ConfigError, match="DataDirectory"):
        open_store(Config())


def test_the_first_deployment_target_of_a_system_is_kept_until_set(
    image_store: ImageStore,
) -> None:
    assert image_store.claim_target("sys", "dir-a") == "dir-a"
    assert image_store.claim_target("sys", "dir-b") == "dir-a", "the records stay A's"
    assert image_store.claim_target("other", "dir-b") == "dir-b"
    image_store.set_target("sys", "dir-b")
    assert image_store.claim_target("sys", "dir-c") == "dir-b"
