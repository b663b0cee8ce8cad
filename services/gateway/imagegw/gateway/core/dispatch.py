"""The dispatcher: takes jobs from the queue, runs them on workers, and turns
worker events into record updates and progress for every watcher.

Leases are renewed while a job runs; a worker lost mid-job hands the job back
(it re-attaches by job id); after MAX_ATTEMPTS the pull fails with the cause."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from imagegw import metrics
from imagegw.domain.errors import BackendUnavailable, ImageGatewayError, WorkerUnavailable
from imagegw.domain.model import STAGE_STATE, BuildJob, Failure, ImageState, RegistryCredentials
from imagegw.gateway.core.pulls import image_record_for, progress_event
from imagegw.gateway.core.workers import WorkerLost, Workers
from imagegw.gateway.queue.base import Claim, JobQueue, ProgressEvent, ProgressHub
from imagegw.gateway.records import PullKey
from imagegw.gateway.store.base import ImageStore

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
#: Store writes for progress happen at most this often per job (events go out always).
STORE_PROGRESS_INTERVAL = 1.0


class Dispatcher:
    def __init__(self, store: ImageStore, queue: JobQueue, hub: ProgressHub, workers: Workers,
                 *, consumers: int = 2, name: str | None = None,
                 credentials: Callable[[int, str], RegistryCredentials | None] = (
                     lambda _uid, _reference: None),
                 lease_seconds: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.queue = queue
        self.hub = hub
        self.workers = workers
        self.consumers = consumers
        # Consumer names must be unique among every gateway sharing one queue.
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.credentials = credentials
        self.lease_seconds = lease_seconds
        self.clock = clock
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self.consumers):
            thread = threading.Thread(target=self._loop, args=(f"{self.name}-{index}",),
                                      name=f"dispatch-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def _loop(self, consumer: str) -> None:
        while not self._stop.is_set():
            try:
                systems = self.workers.systems()
                if systems is not None and not systems:
                    self._stop.wait(1.0)  # no live worker: leave the jobs queued
                    continue
                claim = self.queue.claim(consumer, systems, timeout=1.0)
            except ImageGatewayError as exc:
                log.warning("queue unavailable: %s", exc)
                self._stop.wait(1.0)
                continue
            if claim is None:
                continue
            try:
                self._run(claim)
            except ImageGatewayError as exc:
                # Records or queue went away mid-job (e.g. Redis restarted): hand the
                # job back if we still can; the periodic reconcile re-queues it if not.
                log.warning("dispatching job %s interrupted: %s", claim.job.job_id, exc)
                self._release_quietly(claim)
                self._stop.wait(1.0)
            except Exception:
                log.exception("dispatching job %s failed", claim.job.job_id)
                self._release_quietly(claim)
                self._stop.wait(1.0)

    def _release_quietly(self, claim: Claim) -> None:
        try:
            self.queue.release(claim)
        except ImageGatewayError as exc:
            log.warning("could not hand job %s back: %s", claim.job.job_id, exc)

    def _run(self, claim: Claim) -> None:
        job = claim.job
        spec = job.spec
        key = PullKey(job.system, spec.reference, spec.acl_key)
        pull = self.store.get_pull(key)
        if pull is None or pull.job_id != job.job_id or not pull.state.in_flight:
            log.info("dropping stale job %s", job.job_id)
            self.queue.ack(claim)
            return
        attempts = self.store.note_attempt(key, job.job_id, self.clock())
        if attempts > MAX_ATTEMPTS:
            self._fail(claim, key, Failure.of(WorkerUnavailable(
                f"gave up after {MAX_ATTEMPTS} attempts: the worker or gateway was lost "
                "each time", hint="pull again to retry")))
            return
        build = BuildJob(
            job_id=job.job_id, system=job.system, reference=spec.reference,
            user_acl=spec.user_acl, group_acl=spec.group_acl,
            # Looked up now, for the puller only: secrets never enter the queue.
            credentials=self.credentials(spec.requester_uid, spec.reference),
            known_manifest_digest=spec.known_manifest_digest,
            policy_digest=spec.policy_digest,
        )
        keeper = _LeaseKeeper(self.queue, claim, self.lease_seconds / 3)
        keeper.start()
        try:
            with metrics.job_in_flight():
                self._follow(claim, key, build)
        except WorkerLost as exc:
            log.warning("job %s: %s (attempt %d)", job.job_id, exc, attempts)
            if attempts >= MAX_ATTEMPTS:
                self._fail(claim, key, Failure.of(exc, f"{exc}; gave up after {attempts} attempts"))
            else:
                self._stop.wait(min(2.0 * attempts, 10.0))
                self.queue.release(claim)
        except BackendUnavailable:
            raise  # the records or the broker are away, not the job: the loop hands it back
        except ImageGatewayError as exc:  # no worker reachable right now
            log.warning("job %s: %s", job.job_id, exc)
            self.store.fail_pull(key, job.job_id, Failure.of(exc), self.clock())
            self._publish(job.job_id, ProgressEvent.ended())
            self.queue.ack(claim)
        finally:
            keeper.stop()

    def _follow(self, claim: Claim, key: PullKey, build: BuildJob) -> None:
        _address, events = self.workers.build(build)
        last_state: ImageState | None = None
        last_write = 0.0
        for event in events:
            if event.progress is not None:
                state = STAGE_STATE.get(event.progress.stage, ImageState.PULLING)
                now = time.monotonic()
                if state != last_state or now - last_write > STORE_PROGRESS_INTERVAL:
                    self.store.update_pull(key, build.job_id, state, event.progress, self.clock())
                    last_state, last_write = state, now
                self._publish(build.job_id, progress_event(state, event.progress))
            elif event.result is not None:
                result = event.result
                pull = self.store.get_pull(key)
                if pull is None:
                    break
                if result.unchanged and result.trust is None:
                    self.store.refresh_pull(key, build.job_id, self.clock())
                else:  # with a verdict: the record keeps the one of the policy now in force
                    image = image_record_for(key, pull, result, self.clock())
                    self.store.complete_pull(key, build.job_id, image, self.clock())
                self._publish(build.job_id, ProgressEvent.ended())
                self.queue.ack(claim)
                return
            elif event.failure is not None:
                self._fail(claim, key, event.failure)
                return
        raise WorkerLost("worker stream ended without a result")

    def _fail(self, claim: Claim, key: PullKey, failure: Failure) -> None:
        self.store.fail_pull(key, claim.job.job_id, failure, self.clock())
        self._publish(claim.job.job_id, ProgressEvent.ended())
        self.queue.ack(claim)

    def _publish(self, job_id: str, event: ProgressEvent) -> None:
        """Progress is best effort: a broker outage drops it (watchers read the records
        meanwhile) and never stops the job."""
        try:
            self.hub.publish(job_id, event)
        except BackendUnavailable as exc:
            log.debug("job %s: progress dropped: %s", job_id, exc)


class _LeaseKeeper:
    def __init__(self, queue: JobQueue, claim: Claim, interval: float) -> None:
        self._queue = queue
        self._claim = claim
        self._interval = max(0.5, interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not self._queue.extend(self._claim):
                    log.warning("lost the lease on job %s", self._claim.job.job_id)
            except ImageGatewayError as exc:
                log.warning("could not extend lease on job %s: %s", self._claim.job.job_id, exc)
