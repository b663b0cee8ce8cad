"""The JobQueue and ProgressHub contracts, run over the in-process backend and a
real redis-server on 127.0.0.1."""

# Fixtures are imported explicitly (no conftest), so test arguments shadow them.

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from imagegw.domain.config import Config
from imagegw.domain.errors import ConfigError
from imagegw.domain.model import ImageState, Progress, Stage
from imagegw.gateway.queue import (
    Claim,
    JobQueue,
    JobSpec,
    MemoryJobQueue,
    MemoryProgressHub,
    ProgressEvent,
    QueuedJob,
    QueueUnavailable,
    RedisJobQueue,
    RedisProgressHub,
    open_queue,
)
from tests.support.backends import (
    HubFactory,
    QueueFactory,
)
from tests.support.redis_server import (
    RedisServer,
    free_port,
)

LEASE = 0.4


def job(job_id: str, system: str = "cluster") -> QueuedJob:
    return QueuedJob(job_id, system, JobSpec(
        reference=f"docker.io/library/{job_id}:1", acl_key="u1000-g100", user_acl=(1000, 1001),
        group_acl=(100,), requester_uid=1000, known_manifest_digest="sha256:" + "ab" * 32))


def event(n: int) -> ProgressEvent:
    return ProgressEvent(state=int(ImageState.PULLING), progress=Progress(
        Stage.DOWNLOADING, layer_index=n, layer_count=200, bytes_done=n, bytes_total=200,
        message=f"layer {n}"))


def claim_now(queue: JobQueue, consumer: str, systems: list[str] | None = None) -> Claim | None:
    return queue.claim(consumer, systems, 0)


# -- claiming --------------------------------------------------------------------------


def test_jobs_of_one_system_are_claimed_in_submission_order(
    job_queue_factory: QueueFactory,
) -> None:
    queue = job_queue_factory()
    for n in range(5):
        queue.submit(job(f"job-{n}"))
    claims = [queue.claim("w1", None, 1.0) for _ in range(5)]
    assert [c.job.job_id for c in claims if c] == [f"job-{n}" for n in range(5)]
    assert all(c is not None and c.attempt == 1 and c.consumer == "w1" for c in claims)


def test_a_claimed_job_carries_its_spec_unchanged(job_queue_factory: QueueFactory) -> None:
    queue = job_queue_factory()
    queue.submit(job("job-1"))
    claim = queue.claim("w1", ["cluster"], 1.0)
    assert claim is not None and claim.job == job("job-1")


def test_claim_takes_only_jobs_of_the_requested_systems(
    job_queue_factory: QueueFactory,
) -> None:
    queue = job_queue_factory()
    queue.submit(job("a-1", "alpha"))
    queue.submit(job("b-1", "beta"))
    queue.submit(job("a-2", "alpha"))
    first = queue.claim("w1", ["beta"], 1.0)
    assert first is not None and first.job.job_id == "b-1"
    assert queue.claim("w1", ["beta", "gamma"], 0) is None
    rest = [queue.claim("w2", ["alpha"], 1.0) for _ in range(2)]
    assert [c.job.job_id for c in rest if c] == ["a-1", "a-2"]


def test_claim_without_jobs_returns_none_after_the_timeout(
    job_queue_factory: QueueFactory,
) -> None:
    queue = job_queue_factory()
    started = time.monotonic()
    assert queue.claim("w1", None, 0.3) is None
    assert queue.claim("w1", ["cluster"], 0.3) is None
    assert 0.55 <= time.monotonic() - started < 3.0


def test_a_waiting_claim_gets_a_job_submitted_meanwhile(job_queue_factory: QueueFactory) -> None:
    queue = job_queue_factory()
    got: list[Claim | None] = []
    waiter = threading.Thread(target=lambda: got.append(queue.claim("w1", ["cluster"], 5.0)))
    waiter.start()
    time.sleep(0.1)
    queue.submit(job("job-1"))
    waiter.join(timeout=10)
    assert got and got[0] is not None and got[0].job.job_id == "job-1"


def test_each_job_goes_to_exactly_one_of_eight_concurrent_claimers(
    job_queue_factory: QueueFactory,
) -> None:
    queue = job_queue_factory()
    for n in range(40):
        queue.submit(job(f"job-{n}", system=("alpha", "beta")[n % 2]))
    barrier = threading.Barrier(8)
    claimed: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(consumer: str) -> None:
        try:
            barrier.wait(timeout=10)
            while (claim := queue.claim(consumer, None, 0.2)) is not None:
                with lock:
                    claimed.append(claim.job.job_id)
                queue.ack(claim)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert sorted(claimed) == sorted(f"job-{n}" for n in range(40))
    assert queue.pending() == []


# -- leases ----------------------------------------------------------------------------


def test_an_expired_lease_hands_the_job_to_another_consumer_as_attempt_two(
    job_queue_factory: QueueFactory,
) -> None:
    queue = job_queue_factory(lease_seconds=LEASE)
    queue.submit(job("job-1"))
    first = queue.claim("dead-worker", None, 1.0)
    assert first is not None
    assert claim_now(queue, "w2") is None  # still leased
    second = queue.claim("w2", ["cluster"], 3.0)
    assert second is not None
    assert (second.job, second.consumer, second.attempt) == (first.job, "w2", 2)
    assert not queue.extend(first)  # the dead worker's claim is stale


def test_extending_the_lease_keeps_the_job(job_queue_factory: QueueFactory) -> None:
    queue = job_queue_factory(lease_seconds=1.0)
    queue.submit(job("job-1"))
    claim = queue.claim("w1", None, 1.0)
    assert claim is not None
    for _ in range(2):  # 1.2 s in all: past the first lease
        time.sleep(0.6)
        assert queue.extend(claim)
    assert claim_now(queue, "w2") is None
    assert queue.pending() == [(claim.job, "w1", 1)]


def test_an_acked_job_is_gone_for_good(job_queue_factory: QueueFactory) -> None:
    queue = job_queue_factory(lease_seconds=LEASE)
    queue.submit(job("job-1"))
    claim = queue.claim("w1", None, 1.0)
    assert claim is not None
    queue.ack(claim)
    assert queue.claim("w2", None, LEASE * 2) is None  # not even after the lease
    assert queue.pending() == []
    assert not queue.extend(claim)


def test_a_released_job_is_handed_out_again_at_once(job_queue_factory: QueueFactory) -> None:
    queue = job_queue_factory()  # a long lease: only the release frees the job
    queue.submit(job("job-1"))
    first = queue.claim("w1", None, 1.0)
    assert first is not None
    queue.release(first)
    assert queue.pending() == [(first.job, None, 1)]
    second = claim_now(queue, "w2")
    assert second is not None
    assert (second.job, second.consumer, second.attempt) == (first.job, "w2", 2)


def test_a_stale_claim_cannot_ack_or_release_the_job(job_queue_factory: QueueFactory) -> None:
    queue = job_queue_factory(lease_seconds=LEASE)
    queue.submit(job("job-1"))
    stale = queue.claim("w1", None, 1.0)
    current = queue.claim("w2", None, 3.0)
    assert stale is not None and current is not None
    queue.ack(stale)
    queue.release(stale)
    assert queue.pending() == [(current.job, "w2", 2)]
    assert queue.extend(current)


def test_pending_shows_waiting_and_running_jobs_oldest_first(
    job_queue_factory: QueueFactory,
) -> None:
    queue = job_queue_factory()
    queue.submit(job("job-1"))
    queue.submit(job("job-2", "beta"))
    queue.submit(job("job-3"))
    claim = queue.claim("w1", ["cluster"], 1.0)
    assert claim is not None
    assert queue.pending() == [
        (job("job-1"), "w1", 1), (job("job-2", "beta"), None, 0), (job("job-3"), None, 0),
    ]


# -- Redis specifics -------------------------------------------------------------------


def test_no_job_is_lost_when_the_redis_queue_object_is_recreated(
    redis_server: RedisServer,
) -> None:
    admin = redis_server.client()
    admin.flushall()
    admin.close()
    queue = RedisJobQueue(redis_server.client(), lease_seconds=LEASE)
    for n in range(3):
        queue.submit(job(f"job-{n}"))
    running = queue.claim("w1", None, 1.0)
    assert running is not None
    queue.close()

    again = RedisJobQueue(redis_server.client(), lease_seconds=LEASE)
    try:
        assert [(j.job_id, c, a) for j, c, a in again.pending()] == [
            ("job-0", "w1", 1), ("job-1", None, 0), ("job-2", None, 0)]
        claims = [again.claim("w2", None, 3.0) for _ in range(3)]
        assert sorted((c.job.job_id, c.attempt) for c in claims if c) == [
            ("job-0", 2), ("job-1", 1), ("job-2", 1)]
    finally:
        again.close()


def test_redis_queue_and_hub_work_again_after_the_server_restarts(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    queue = RedisJobQueue(server.client())
    hub = RedisProgressHub(server.client())
    try:
        queue.submit(job("before"))
        subscription = hub.subscribe("job-1")
        server.restart()  # no persistence: the queued job and the groups are gone
        queue.submit(job("after"))
        claim = queue.claim("w1", None, 2.0)
        assert claim is not None and claim.job.job_id == "after"
        deadline = time.monotonic() + 5.0
        received = None
        while received is None and time.monotonic() < deadline:
            hub.publish("job-1", event(1))  # lost until the subscriber has reconnected
            received = subscription.get(0.1)
        assert received == event(1)
        subscription.close()
    finally:
        queue.close()
        hub.close()
        server.stop()


def test_redis_progress_subscriptions_outlive_an_outage_of_seconds(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    hub = RedisProgressHub(server.client())
    try:
        before = hub.subscribe("job-1")
        server.kill()
        time.sleep(1.0)
        assert before.get(0.5) is None, "no event, no error: the watcher reads the records"
        during = hub.subscribe("job-2")  # returns while Redis is away
        server.start()
        deadline = time.monotonic() + 10.0
        got: dict[str, object] = {}
        while len(got) < 2 and time.monotonic() < deadline:
            hub.publish("job-1", event(1))
            hub.publish("job-2", event(2))
            for name, subscription in (("job-1", before), ("job-2", during)):
                received = subscription.get(0.1)
                if received is not None:
                    got[name] = received
        assert got == {"job-1": event(1), "job-2": event(2)}
        before.close()
        during.close()
    finally:
        hub.close()
        server.stop()


def test_redis_queue_reports_an_unreachable_server_as_retryable() -> None:
    client = redis.Redis(host="127.0.0.1", port=free_port(), socket_timeout=1.0,
                         socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0))
    queue = RedisJobQueue(client)
    try:
        with pytest.raises(QueueUnavailable) as caught:
            queue.submit(job("job-1"))
        assert caught.value.retryable
    finally:
        queue.close()


def test_open_queue_is_in_memory_without_a_broker() -> None:
    queue, hub = open_queue(Config())
    assert isinstance(queue, MemoryJobQueue) and isinstance(hub, MemoryProgressHub)


def test_open_queue_uses_redis_for_a_redis_broker(redis_url: str) -> None:
    queue, hub = open_queue(Config(broker=redis_url))
    try:
        assert isinstance(queue, RedisJobQueue) and isinstance(hub, RedisProgressHub)
        queue.submit(job("job-via-config", "open-queue-test"))
        claim = queue.claim("w1", ["open-queue-test"], 1.0)
        assert claim is not None
        queue.ack(claim)
    finally:
        queue.close()
        hub.close()


def test_open_queue_rejects_a_non_redis_broker() -> None:
    with pytest.raises(ConfigError, match="Broker"):
        open_queue(Config(broker="amqp://guest:secret@127.0.0.1:5672//"))


# -- progress hub ----------------------------------------------------------------------


def drain(subscription: object, until: int, timeout: float = 5.0) -> list[int]:
    """Reads events `event(n)` until n == until (or nothing comes for `timeout`)."""
    seen: list[int] = []
    while (received := subscription.get(timeout)) is not None:  # type: ignore[attr-defined]
        assert received == event(received.progress.layer_index)
        seen.append(received.progress.layer_index)
        if seen[-1] == until:
            break
    return seen


def test_a_subscriber_sees_events_in_order(progress_hub_factory: HubFactory) -> None:
    hub = progress_hub_factory()
    subscription = hub.subscribe("job-1")
    for n in range(20):
        hub.publish("job-1", event(n))
    assert drain(subscription, 19) == list(range(20))
    subscription.close()


def test_events_arrive_as_they_were_published(progress_hub_factory: HubFactory) -> None:
    hub = progress_hub_factory()
    subscription = hub.subscribe("job-1")
    hub.publish("job-1", event(0))
    hub.publish("job-1", ProgressEvent.ended())
    assert subscription.get(5.0) == event(0)
    ended = subscription.get(5.0)
    assert ended == ProgressEvent.ended() and ended.final and ended.progress is None
    subscription.close()


def test_two_subscribers_both_see_every_event(progress_hub_factory: HubFactory) -> None:
    hub = progress_hub_factory()
    first, second = hub.subscribe("job-1"), hub.subscribe("job-1")
    for n in range(10):
        hub.publish("job-1", event(n))
    assert drain(first, 9) == list(range(10))
    assert drain(second, 9) == list(range(10))
    first.close()
    second.close()


def test_a_subscriber_sees_only_its_channel_from_when_it_subscribed(
    progress_hub_factory: HubFactory,
) -> None:
    hub = progress_hub_factory()
    hub.publish("job-1", event(-1))
    subscription = hub.subscribe("job-1")
    hub.publish("job-2", event(100))
    hub.publish("job-1", event(0))
    assert subscription.get(5.0) == event(0)
    assert subscription.get(0.2) is None
    subscription.close()


def test_a_slow_subscriber_keeps_only_the_newest_events(progress_hub_factory: HubFactory) -> None:
    hub = progress_hub_factory(buffer_size=8)
    subscription = hub.subscribe("job-1")
    for n in range(200):
        hub.publish("job-1", event(n))
    deadline = time.monotonic() + 5.0
    while subscription.dropped < 192 and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    assert subscription.dropped == 192  # type: ignore[attr-defined]
    assert drain(subscription, 199) == list(range(192, 200))
    subscription.close()


def test_a_closed_subscription_receives_nothing(progress_hub_factory: HubFactory) -> None:
    hub = progress_hub_factory()
    subscription = hub.subscribe("job-1")
    subscription.close()
    hub.publish("job-1", event(0))
    assert subscription.get(0.1) is None
