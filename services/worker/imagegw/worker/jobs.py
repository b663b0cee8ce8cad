"""Running build jobs: at most `slots` at once, each attachable by its job id.

`JobRegistry.start_or_attach(job)` returns the `RunningJob` for `job.job_id`,
starting it when no job with that id runs (or finished recently). Watchers read
the latest progress and the final outcome; a slow watcher skips intermediate
progress instead of growing a buffer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from imagegw.domain.errors import ImageGatewayError
from imagegw.domain.model import BuildEvent, BuildJob, BuildResult, Failure, Progress, Stage

log = logging.getLogger(__name__)

#: How long a finished job stays attachable.
FINISHED_RETENTION = 600.0


class RunningJob:
    def __init__(self, job: BuildJob) -> None:
        self.job = job
        self._cond = threading.Condition()
        self._seq = 0
        self._latest = BuildEvent(progress=Progress(Stage.QUEUED, message="waiting for a slot"))
        self.finished_at: float | None = None

    def publish(self, event: BuildEvent) -> None:
        with self._cond:
            if self._latest.final:
                return
            self._latest = event
            self._seq += 1
            if event.final:
                self.finished_at = time.monotonic()
            self._cond.notify_all()

    @property
    def done(self) -> bool:
        with self._cond:
            return self._latest.final

    def watch(self, *, poll: float = 1.0, alive: Callable[[], bool] = lambda: True
              ) -> Iterator[BuildEvent]:
        """Yields the current event, then each newer one, until the final event."""
        seen = -1
        while True:
            with self._cond:
                while self._seq == seen:
                    self._cond.wait(poll)
                    if self._seq == seen and not alive():
                        return
                seen = self._seq
                event = self._latest
            yield event
            if event.final:
                return


class JobRegistry:
    def __init__(self, run: Callable[[BuildJob, Callable[[Progress], None]], BuildResult],
                 *, slots: int = 2) -> None:
        self._run = run
        self._jobs: dict[str, RunningJob] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max(1, slots))
        self._draining = False

    def start_or_attach(self, job: BuildJob) -> tuple[RunningJob, bool]:
        """The running (or recently finished) job with this id, or a new one."""
        with self._lock:
            self._forget_old()
            current = self._jobs.get(job.job_id)
            if current is not None:
                return current, False
            if self._draining:
                from imagegw.domain.errors import WorkerUnavailable

                raise WorkerUnavailable("worker is shutting down", hint="retry on another worker")
            running = RunningJob(job)
            self._jobs[job.job_id] = running
        thread = threading.Thread(target=self._execute, args=(running,),
                                  name=f"job-{job.job_id[:12]}", daemon=True)
        thread.start()
        return running, True

    def active(self) -> list[RunningJob]:
        with self._lock:
            return [job for job in self._jobs.values() if not job.done]

    def drain(self, timeout: float) -> bool:
        """Refuses new jobs and waits for running ones; True when all finished."""
        with self._lock:
            self._draining = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.active():
                return True
            time.sleep(0.1)
        return not self.active()

    def _forget_old(self) -> None:
        now = time.monotonic()
        stale = [job_id for job_id, job in self._jobs.items()
                 if job.finished_at is not None and now - job.finished_at > FINISHED_RETENTION]
        for job_id in stale:
            del self._jobs[job_id]

    def _execute(self, running: RunningJob) -> None:
        job = running.job
        with self._slots:
            started = time.monotonic()
            try:
                result = self._run(job, lambda p: running.publish(BuildEvent(progress=p)))
            except ImageGatewayError as exc:
                log.warning("job %s (%s on %s) failed: %s", job.job_id, job.reference,
                            job.system, exc)
                running.publish(BuildEvent(failure=Failure.of(exc)))
            except Exception as exc:  # the cause still reaches the user
                log.exception("job %s crashed", job.job_id)
                running.publish(BuildEvent(failure=Failure.of(
                    exc, f"internal error in the worker: {type(exc).__name__}: {exc}")))
            else:
                log.info("job %s: %s -> %s in %.1fs%s", job.job_id, job.reference,
                         result.image_id[:12], time.monotonic() - started,
                         " (reused)" if result.reused else "")
                running.publish(BuildEvent(result=result))
