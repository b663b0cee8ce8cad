"""Pull semantics: one job per (system, reference) at a time, PullUpdateTimeout,
cheap re-checks of old images, progress watching, lookups and listings.

No grpc here: the servicer calls these methods with plain values."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from imagegw.config import Config
from imagegw.errors import ImageNotFound, InvalidRequest
from imagegw.gateway.core.views import ImageStatus, lookup_status, pull_status
from imagegw.gateway.queue.base import JobQueue, ProgressHub, QueuedJob
from imagegw.gateway.records import ImageRecord, PullKey, PullRecord
from imagegw.gateway.store.base import ImageStore
from imagegw.model import ImageState, Progress, Stage
from imagegw.reference import parse_reference

log = logging.getLogger(__name__)

#: How often a watcher re-reads the store when no event arrived.
WATCH_POLL_SECONDS = 2.0
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


@dataclass(frozen=True)
class PullRequest:
    system: str
    reference: str
    image_type: str = "docker"
    force: bool = False
    user_acl: tuple[int, ...] = ()
    group_acl: tuple[int, ...] = ()
    requester_uid: int = -1


@dataclass(frozen=True)
class PullTicket:
    key: PullKey
    job_id: str
    #: True when this request started a new job (False: joined one, or fresh image).
    started: bool
    #: True when a READY image younger than PullUpdateTimeout answered the pull.
    fresh: bool


def acl_key(user_acl: tuple[int, ...], group_acl: tuple[int, ...]) -> str:
    if not user_acl and not group_acl:
        return ""
    users = ",".join(str(u) for u in sorted(set(user_acl)))
    groups = ",".join(str(g) for g in sorted(set(group_acl)))
    return f"u:{users};g:{groups}"


def job_payload(key: PullKey, record: PullRecord, known_manifest_digest: str = "") -> dict:
    return {
        "reference": key.reference,
        "acl_key": key.acl_key,
        "user_acl": list(record.user_acl),
        "group_acl": list(record.group_acl),
        "known_manifest_digest": known_manifest_digest,
        "requester_uid": record.requester_uid,
    }


class PullManager:
    def __init__(self, config: Config, store: ImageStore, queue: JobQueue, hub: ProgressHub,
                 *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.queue = queue
        self.hub = hub
        self.clock = clock

    # -- pulls -----------------------------------------------------------------

    def normalize(self, system: str, image_type: str, reference: str) -> str:
        self.config.platform(system)  # UnknownSystem names the known ones
        if image_type not in ("", "docker"):
            raise InvalidRequest(f"unsupported image type {image_type!r}",
                                 hint="pull supports type 'docker'")
        return str(parse_reference(reference, self.config))

    def request_pull(self, request: PullRequest) -> PullTicket:
        reference = self.normalize(request.system, request.image_type, request.reference)
        key = PullKey(request.system, reference, acl_key(request.user_acl, request.group_acl))
        now = self.clock()
        current = self.store.get_pull(key)
        known_digest = ""
        if current is not None and current.state == ImageState.READY and current.image_id:
            image = self.store.get_image(key.system, current.image_id)
            if image is not None and image.state == ImageState.READY:
                age = now - current.ready_time
                if not request.force and age < self.config.pull_update_timeout:
                    return PullTicket(key, current.job_id, started=False, fresh=True)
                if not request.force:
                    known_digest = image.manifest_digest
        job_id = uuid.uuid4().hex
        record, started = self.store.begin_pull(
            key, job_id, now, requester_uid=request.requester_uid,
            user_acl=tuple(sorted(set(request.user_acl))),
            group_acl=tuple(sorted(set(request.group_acl))),
        )
        if started:
            self.queue.submit(QueuedJob(job_id, key.system, job_payload(key, record, known_digest)))
            log.info("pull %s on %s: job %s queued%s", reference, key.system, job_id,
                     " (re-check)" if known_digest else "")
        return PullTicket(key, record.job_id, started=started, fresh=False)

    def status(self, key: PullKey, progress: Progress | None = None) -> ImageStatus:
        pull = self.store.get_pull(key)
        if pull is None:
            raise ImageNotFound(f"no pull of {key.reference} on {key.system}")
        image = self.store.get_image(key.system, pull.image_id) if pull.image_id else None
        return pull_status(pull, image, expiration=self.config.image_expiration_timeout,
                           progress=progress)

    def watch(self, ticket: PullTicket, alive: Callable[[], bool]) -> Iterator[ImageStatus]:
        """Yields the pull's status, then progress, until READY or FAILED."""
        subscription = self.hub.subscribe(ticket.job_id)
        try:
            status = self.status(ticket.key)
            yield status
            if not status.state.in_flight:
                return
            last_read = time.monotonic()
            while alive():
                event = subscription.get(timeout=0.5)
                stale = time.monotonic() - last_read > WATCH_POLL_SECONDS
                if event is None and not stale:
                    continue
                if event is not None and not event.get("final") and not stale:
                    yield self._progress_status(status, event)
                    continue
                status = self.status(ticket.key)
                last_read = time.monotonic()
                if not status.state.in_flight or (status.pull and status.pull.job_id != ticket.job_id):
                    yield status
                    return
                if event is not None and not event.get("final"):
                    yield self._progress_status(status, event)
        finally:
            subscription.close()

    @staticmethod
    def _progress_status(status: ImageStatus, event: dict) -> ImageStatus:
        progress = progress_from_event(event)
        state = ImageState(event.get("state", int(status.state)))
        return ImageStatus(system=status.system, reference=status.reference, state=state,
                           pull=status.pull, image=status.image, progress=progress,
                           expiration_timeout=status.expiration_timeout)

    # -- lookups -----------------------------------------------------------------

    def lookup(self, system: str, image_type: str, reference: str,
               acl: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())) -> ImageStatus:
        if image_type == "id":
            return self.lookup_id(system, reference)
        normalized = self.normalize(system, image_type, reference)
        key = PullKey(system, normalized, acl_key(*acl))
        pull = self.store.get_pull(key)
        image = None
        if pull is not None and pull.image_id:
            image = self.store.get_image(system, pull.image_id)
        if pull is None or (image is None and pull.state != ImageState.FAILED
                            and not pull.state.in_flight):
            raise ImageNotFound(
                f"image {normalized} is not on system {system}",
                hint=f"pull it first: shifterimg -s {system} pull {reference}")
        if image is not None and image.state == ImageState.READY:
            self.store.touch_image(system, image.image_id, self.clock())
        return lookup_status(pull, image, reference=normalized, system=system,
                             expiration=self.config.image_expiration_timeout)

    def lookup_id(self, system: str, image_id: str) -> ImageStatus:
        self.config.platform(system)
        image_id = image_id.removeprefix("sha256:").lower()
        if not image_id or len(image_id) > 64 or any(c not in "0123456789abcdef" for c in image_id):
            raise InvalidRequest(f"invalid image id {image_id!r}", hint="64 hex digits")
        image = self.store.get_image(system, image_id)
        if image is None:
            raise ImageNotFound(f"no image with id {image_id} on system {system}")
        if image.state == ImageState.READY:
            self.store.touch_image(system, image.image_id, self.clock())
        return lookup_status(None, image, reference=image.tags[0] if image.tags else "",
                             system=system, expiration=self.config.image_expiration_timeout)

    def list_images(self, system: str, state: ImageState | None, page_size: int,
                    page_token: str) -> tuple[list[ImageStatus], str]:
        self.config.platform(system)
        if page_size < 0:
            raise InvalidRequest("page_size must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        try:
            images, token = self.store.list_images(system, state, size, page_token)
        except ValueError as exc:
            raise InvalidRequest("invalid page_token", hint="pass a token from a previous "
                                 "response, or none for the first page") from exc
        statuses = [
            lookup_status(None, image, reference=image.tags[0] if image.tags else "",
                          system=system, expiration=self.config.image_expiration_timeout)
            for image in images
        ]
        return statuses, token

    def list_jobs(self, system: str | None) -> list[PullRecord]:
        if system:
            self.config.platform(system)
        return [pull for pull in self.store.list_pulls(system)
                if pull.state.in_flight or pull.state == ImageState.FAILED]

    # -- recovery ------------------------------------------------------------------

    def recover(self, *, min_age: float = 0.0) -> int:
        """Re-queues in-flight pulls whose job is in no queue: after a gateway restart
        (min_age 0), and periodically for jobs a restarted Redis lost (min_age > 0
        skips pulls that are just being submitted)."""
        queued = {job.job_id for job, _consumer, _attempt in self.queue.pending()}
        resumed = 0
        now = self.clock()
        for pull in self.store.in_flight_pulls():
            if pull.job_id in queued or now - pull.updated < min_age:
                continue
            self.queue.submit(QueuedJob(pull.job_id, pull.key.system, job_payload(pull.key, pull)))
            resumed += 1
            log.info("resuming pull %s on %s (job %s) after restart", pull.key.reference,
                     pull.key.system, pull.job_id)
        return resumed


def progress_event(state: ImageState, progress: Progress) -> dict:
    return {
        "state": int(state), "stage": int(progress.stage), "layer_index": progress.layer_index,
        "layer_count": progress.layer_count, "bytes_done": progress.bytes_done,
        "bytes_total": progress.bytes_total, "message": progress.message,
    }


def progress_from_event(event: dict) -> Progress:
    return Progress(
        stage=Stage(event.get("stage", 0)), layer_index=event.get("layer_index", 0),
        layer_count=event.get("layer_count", 0), bytes_done=event.get("bytes_done", 0),
        bytes_total=event.get("bytes_total", 0), message=event.get("message", ""),
    )


def image_record_for(key: PullKey, pull: PullRecord, result, now: float) -> ImageRecord:
    """The image record a successful build result makes."""
    return ImageRecord(
        system=key.system, image_id=result.image_id, format=result.format,
        manifest_digest=result.manifest_digest, metadata=result.metadata,
        image_file=result.image_file, meta_file=result.meta_file, size_bytes=result.size_bytes,
        tags=(key.reference,), state=ImageState.READY, user_acl=pull.user_acl,
        group_acl=pull.group_acl, acl_key=key.acl_key, last_pull=now, last_used=now,
    )
