"""Pull semantics: one job per (system, reference, ACL) at a time, PullUpdateTimeout,
cheap re-checks of old images, progress watching, lookups and listings, each
decided for one `Caller` (anonymous pulls, private images, per-user limits).

No grpc here: the servicer calls these methods with plain values."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from imagegw.domain.acl import SUFFIX_DIGITS, acl_key, normalized_acl
from imagegw.domain.config import Config
from imagegw.domain.errors import (
    BackendUnavailable,
    Cancelled,
    ImageGatewayError,
    ImageNotFound,
    InvalidRequest,
    PermissionDenied,
    Unauthenticated,
)
from imagegw.domain.model import Failure, ImageState, Progress, Stage
from imagegw.domain.reference import parse_reference
from imagegw.gateway.core.access import ANONYMOUS_CALLER, Caller
from imagegw.gateway.core.limits import PullLimiter
from imagegw.gateway.core.presence import FileCheck, FileProblem, Retirement
from imagegw.gateway.core.signed_images import judged_by_other_policy, trust_extra
from imagegw.gateway.core.views import ImageStatus, lookup_status, pull_status
from imagegw.gateway.queue.base import JobQueue, JobSpec, ProgressEvent, ProgressHub, QueuedJob
from imagegw.gateway.records import ImageRecord, PullKey, PullRecord
from imagegw.gateway.store.base import ImageStore
from imagegw.registry.policy import guard_for_reference

log = logging.getLogger(__name__)

#: How often a watcher re-reads the store when no event arrived.
WATCH_POLL_SECONDS = 2.0
#: A READY lookup answer is reused for this long (lookups are what every job
#: submission does); a pull, expiry or ACL change shows after at most this delay.
LOOKUP_CACHE_SECONDS = 1.0
LOOKUP_CACHE_ENTRIES = 10000
#: Seconds within which repeated lookups of an image record only one use (at most
#: 1% of ImageExpirationTimeout, so expiry stays accurate).
TOUCH_INTERVAL = 60.0
#: References of imported images ("import/<tag>"); they never come from a registry.
IMPORT_PREFIX = "import/"


@dataclass(frozen=True)
class PullRequest:
    system: str
    reference: str
    image_type: str = "docker"
    force: bool = False
    user_acl: tuple[int, ...] = ()
    group_acl: tuple[int, ...] = ()
    requester_uid: int = -1
    #: Seconds a failed pull is answered with its failure instead of being retried
    #: (0: retry at once). For clients that re-send the pull to poll it (Shifter's REST).
    failure_hold: float = 0.0


@dataclass(frozen=True)
class PullTicket:
    key: PullKey
    job_id: str
    #: True when this request started a new job (False: joined one, or fresh image).
    started: bool
    #: When a READY image younger than PullUpdateTimeout (or a failure within
    #: PullRequest.failure_hold) answered the pull: the status it was decided on (a pull
    #: another caller starts a moment later does not change it).
    answer: ImageStatus | None = None

    @property
    def fresh(self) -> bool:
        """Whether a READY image answered the pull without a job."""
        return self.answer is not None and self.answer.state == ImageState.READY


def _visible_pull(caller: Caller, pull: PullRecord) -> bool:
    return caller.can_use(pull.key.acl_key, pull.user_acl, pull.group_acl)


def _lookup_rank(pull: PullRecord) -> tuple[bool, bool, float]:
    """Lookups prefer a READY image, then the caller's private copy, then the newest."""
    return (pull.state == ImageState.READY, bool(pull.key.acl_key),
            pull.ready_time or pull.updated)


def job_spec(key: PullKey, record: PullRecord, known_manifest_digest: str = "",
             policy_digest: str = "") -> JobSpec:
    return JobSpec(reference=key.reference, acl_key=key.acl_key, user_acl=record.user_acl,
                   group_acl=record.group_acl, requester_uid=record.requester_uid,
                   known_manifest_digest=known_manifest_digest, policy_digest=policy_digest)


class PullManager:
    def __init__(self, config: Config, store: ImageStore, queue: JobQueue, hub: ProgressHub,
                 *, clock: Callable[[], float] = time.time,
                 registry_login: Callable[[int, str], object | None] = lambda uid, ref: None,
                 policy_digest: Callable[[str], str] = lambda _system: "") -> None:
        self.config = config
        #: The caller's stored registry login for a reference's registry (None: none); a
        #: pull made with one is private to its puller (Logins.credentials_for).
        self.registry_login = registry_login
        #: The digest of the signature policy a system's images are judged by ("": none).
        self.policy_digest = policy_digest
        self.store = store
        self.queue = queue
        self.hub = hub
        self.clock = clock
        self._normalized: dict[tuple[str, str, str], str] = {}
        self._ready_lookups: dict[tuple, tuple[float, ImageStatus]] = {}
        self._cache_lock = threading.Lock()
        self.limiter = PullLimiter(store, config.max_concurrent_pulls_per_user)
        self.files = FileCheck(config)
        self.retirement = Retirement(config, store)

    # -- pulls -----------------------------------------------------------------

    def normalize(self, system: str, image_type: str, reference: str) -> str:
        key = (system, image_type, reference)
        normalized = self._normalized.get(key)
        if normalized is None:
            normalized = self._normalize(system, image_type, reference)
            if len(self._normalized) >= LOOKUP_CACHE_ENTRIES:
                self._normalized.clear()
            self._normalized[key] = normalized
        return normalized

    def _normalize(self, system: str, image_type: str, reference: str) -> str:
        self.config.platform(system)  # UnknownSystem names the known ones
        if image_type not in ("", "docker"):
            raise InvalidRequest(f"unsupported image type {image_type!r}",
                                 hint="pull supports type 'docker'")
        if reference.strip().startswith(IMPORT_PREFIX):
            return import_reference(reference.strip().removeprefix(IMPORT_PREFIX))
        return str(parse_reference(reference, self.config))

    def request_pull(self, request: PullRequest, caller: Caller = ANONYMOUS_CALLER) -> PullTicket:
        platform = self.config.platform(request.system)
        private = bool(request.user_acl or request.group_acl)
        if caller.anonymous and (private or not platform.allow_anonymous_pull):
            what = "private pulls" if private else f"pulls on system {platform.name}"
            raise Unauthenticated(
                f"{what} need a MUNGE credential; this request carried none",
                hint="run shifterimg on a node of the system (munge must work there)")
        reference = self.normalize(request.system, request.image_type, request.reference)
        self._forget(request.system, reference)
        if reference.startswith(IMPORT_PREFIX):
            raise InvalidRequest(f"{reference} is an imported image and cannot be pulled",
                                 hint="look it up, or import it again (shifterimg import)")
        explicit_acl = private
        if not caller.anonymous and self.registry_login(caller.uid, reference) is not None:
            # Pulled with the caller's own registry login: what the registry let them read
            # stays theirs (and their ACL's). Others pull with their own login, and the
            # registry decides for them again (the worker always asks it for the manifest).
            private = True
        users = normalized_acl((*request.user_acl, caller.uid)) if private else ()
        groups = normalized_acl(request.group_acl)
        key = PullKey(request.system, reference, acl_key(users, groups))
        if explicit_acl and not caller.is_admin(request.system):
            self._check_acl_change(key, caller)
        now = self.clock()
        current = self.store.get_pull(key)
        if (current is not None and current.state == ImageState.FAILED
                and now - current.updated < request.failure_hold):
            return PullTicket(key, current.job_id, started=False, answer=pull_status(
                current, None, expiration=self.config.image_expiration_timeout))
        known_digest = ""
        # A READY image younger than this answers the pull without a job.
        fresh_since: float | None = None if request.force else now - self.config.pull_update_timeout
        if current is not None and current.state == ImageState.READY and current.image_id:
            image = self.store.get_image(key.system, current.image_id, key.acl_key)
            if image is not None and image.state == ImageState.READY and self._files_gone(image):
                fresh_since = None  # republish: from the conversion cache when it is there
            elif image is not None and image.state == ImageState.READY:
                if judged_by_other_policy(image, self.policy_digest(key.system)):
                    fresh_since = None  # a worker judges it by the current policy first
                if fresh_since is not None and current.ready_time > fresh_since:
                    return self._fresh(key, current, image)
                if not request.force:
                    known_digest = image.manifest_digest
            else:
                fresh_since = None  # its image is gone: pull again
        # Only registries the site allows, before any job exists (the worker checks again).
        guard_for_reference(self.config, parse_reference(reference, self.config))
        job_id = uuid.uuid4().hex
        with self.limiter.admit(caller, key):
            record, started = self.store.begin_pull(
                key, job_id, now, requester_uid=caller.uid, user_acl=users, group_acl=groups,
                keep_ready_since=fresh_since)
        if started:
            try:
                self.queue.submit(QueuedJob(job_id, key.system, job_spec(
                    key, record, known_digest, self.policy_digest(key.system))))
            except BackendUnavailable as exc:
                # The pull is in the records: the periodic recovery queues its job once the
                # broker is back (a broker outage is not a pull failure).
                log.warning("pull %s on %s: job %s recorded, not yet queued: %s", reference,
                            key.system, job_id, exc)
            else:
                log.info("pull %s on %s: job %s queued%s", reference, key.system, job_id,
                         " (re-check)" if known_digest else "")
        elif record.state == ImageState.READY:
            # The pull in flight when we looked finished before we could join it.
            image = self.store.get_image(key.system, record.image_id, key.acl_key)
            if image is not None:
                return self._fresh(key, record, image)
        return PullTicket(key, record.job_id, started=started)

    def _files_gone(self, image: ImageRecord) -> FileProblem | None:
        """Why a READY image's files are unusable (then its record is retired, unless a
        pull is in flight), or None when they are there or cannot be checked here."""
        problem = self.files.missing(image)
        if problem is None:
            return None
        log.warning("image %s on %s (%s) is READY in the records but %s", image.image_id,
                    image.system, ", ".join(image.tags) or "untagged", problem)
        self.files.forget(image)
        self._forget(image.system, None)
        try:
            # A short file goes (a republish would take it for published); files found
            # gone are not touched: the next publish overwrites what is left.
            self.retirement.retire(image, why="retired (files gone or short)",
                                   remove_files=problem.damaged)
        except ImageGatewayError as exc:
            log.warning("could not retire %s on %s: %s", image.image_id, image.system, exc)
        return problem

    def _fresh(self, key: PullKey, pull: PullRecord, image: ImageRecord) -> PullTicket:
        return PullTicket(key, pull.job_id, started=False, answer=pull_status(
            pull, image, expiration=self.config.image_expiration_timeout))

    def _check_acl_change(self, key: PullKey, caller: Caller) -> None:
        """A private image of this reference that names the caller but was pulled by
        someone else keeps its ACLs: only its puller (or an admin) may set new ones."""
        for pull in self.store.pulls_of(key.system, key.reference):
            if (pull.key.acl_key and pull.key.acl_key != key.acl_key
                    and pull.requester_uid != caller.uid
                    and caller.named_in(pull.user_acl, pull.group_acl)):
                raise PermissionDenied(
                    f"{key.reference} on {key.system} is private to an ACL set by uid "
                    f"{pull.requester_uid}; only that user or an admin can change its ACLs",
                    hint="use the image as it is (shifterimg lookup), or ask its owner")

    def status(self, key: PullKey, progress: Progress | None = None) -> ImageStatus:
        pull = self.store.get_pull(key)
        if pull is None:
            raise ImageNotFound(f"no pull of {key.reference} on {key.system}")
        image = (self.store.get_image(key.system, pull.image_id, key.acl_key)
                 if pull.image_id else None)
        return pull_status(pull, image, expiration=self.config.image_expiration_timeout,
                           progress=progress)

    def watch(self, ticket: PullTicket, alive: Callable[[], bool]) -> Iterator[ImageStatus]:
        """Yields the pull's status, then progress, until READY or FAILED (see `PullWatch`),
        waiting for events on this thread."""
        watch = PullWatch(self, ticket)
        subscription = self.hub.subscribe(watch.job_id)
        try:
            yield watch.begin()
            while not watch.done and alive():
                event = subscription.get(timeout=0.5)
                if event is None and not watch.stale():
                    continue
                if event is not None and not watch.needs_store(event):
                    yield watch.progress(event)
                    continue
                job_id = watch.job_id
                statuses = watch.reread(event)
                if watch.job_id != job_id:
                    subscription.close()
                    subscription = self.hub.subscribe(watch.job_id)
                yield from statuses
        finally:
            subscription.close()

    @staticmethod
    def _progress_status(status: ImageStatus, event: ProgressEvent) -> ImageStatus:
        progress = event.progress or Progress(Stage.UNSPECIFIED)
        state = ImageState(event.state or int(status.state))
        return ImageStatus(system=status.system, reference=status.reference, state=state,
                           pull=status.pull, image=status.image, progress=progress,
                           expiration_timeout=status.expiration_timeout)

    # -- lookups -----------------------------------------------------------------

    def lookup(self, system: str, image_type: str, reference: str,
               caller: Caller = ANONYMOUS_CALLER) -> ImageStatus:
        """The image a reference points at for this caller: public, or a private copy
        naming them (never one they may not use, not even for admins)."""
        if image_type == "id":
            return self.lookup_id(system, reference, caller)
        cached = self.cached_lookup(system, image_type, reference, caller)
        if cached is not None:
            return cached
        normalized = self.normalize(system, image_type, reference)
        cache_key = (system, normalized, caller.viewer)
        status = self._lookup(system, normalized, reference, caller)
        if status.state == ImageState.READY:
            self._remember(cache_key, status)
        return status

    def cached_lookup(self, system: str, image_type: str, reference: str,
                      caller: Caller = ANONYMOUS_CALLER) -> ImageStatus | None:
        """The READY status `lookup` would answer from its cache for this caller (the
        same object, for up to LOOKUP_CACHE_SECONDS), or None when it would have to
        look: dictionary reads only, no I/O and no lock, so an event loop may call it."""
        normalized = self._normalized.get((system, image_type, reference))
        if normalized is None:
            return None
        cached = self._ready_lookups.get((system, normalized, caller.viewer))
        if cached is None or cached[0] <= time.monotonic():
            return None
        return cached[1]

    def forget(self, system: str, reference: str) -> None:
        """Drops cached lookups of a reference whose image changed here (expired)."""
        self._forget(system, reference)

    def _forget(self, system: str, reference: str | None) -> None:
        """Drops cached lookups of a reference this gateway is pulling again (None: of
        every reference of the system)."""
        with self._cache_lock:
            for key in [k for k in self._ready_lookups
                        if k[0] == system and reference in (None, k[1])]:
                del self._ready_lookups[key]

    def _remember(self, key: tuple, status: ImageStatus) -> None:
        with self._cache_lock:
            if len(self._ready_lookups) >= LOOKUP_CACHE_ENTRIES:
                self._ready_lookups.clear()
            self._ready_lookups[key] = (time.monotonic() + LOOKUP_CACHE_SECONDS, status)

    def _lookup(self, system: str, normalized: str, reference: str, caller: Caller
                ) -> ImageStatus:
        visible = [p for p in self.store.pulls_of(system, normalized) if _visible_pull(caller, p)]
        pull = max(visible, key=_lookup_rank) if visible else None
        image = None
        if pull is not None and pull.image_id:
            image = self.store.get_image(system, pull.image_id, pull.key.acl_key)
        if pull is None or (image is None and pull.state != ImageState.FAILED
                            and not pull.state.in_flight):
            raise ImageNotFound(
                f"image {normalized} is not on system {system}",
                hint=f"pull it first: shifterimg -s {system} pull {reference}")
        if image is not None and image.state == ImageState.READY:
            self._refuse_missing(image, normalized, reference)
        if image is not None:
            self._check_policy(image, f"shifterimg -s {system} pull {reference}")
            self._note_use(image)
        return lookup_status(pull, image, reference=normalized, system=system,
                             expiration=self.config.image_expiration_timeout)

    def _refuse_missing(self, image: ImageRecord, what: str, reference: str) -> None:
        problem = self._files_gone(image)
        if problem is not None:
            raise ImageNotFound(
                f"image {what} on system {image.system} is missing: {problem}",
                hint=f"pull it again to put it back: shifterimg -s {image.system} pull "
                f"{reference}")

    def _check_policy(self, image: ImageRecord, pull_command: str) -> None:
        """A READY image accepted under another signature policy is not answered."""
        if image.state == ImageState.READY and judged_by_other_policy(
                image, self.policy_digest(image.system)):
            raise ImageNotFound(
                f"image {image.image_id} on system {image.system} was accepted under another "
                "signature policy than the system's current one",
                hint=f"pull it again to have it judged by the current policy: {pull_command}")

    def _note_use(self, image: ImageRecord) -> None:
        """Records a lookup for expiry; at most once per TOUCH_INTERVAL per image, so
        the lookups of every job submission do not each cost a database write."""
        now = self.clock()
        interval = min(TOUCH_INTERVAL, self.config.image_expiration_timeout / 100)
        if image.state == ImageState.READY and now - image.last_used >= interval:
            self.store.touch_image(image.system, image.image_id, now, image.acl_key)

    def lookup_id(self, system: str, image_id: str,
                  caller: Caller = ANONYMOUS_CALLER) -> ImageStatus:
        self.config.platform(system)
        image_id, name = split_image_name(image_id)
        usable = [i for i in self.store.find_images(system, image_id)
                  if caller.can_use(i.acl_key, i.user_acl, i.group_acl)
                  and (not name or i.name == name)]
        if not usable:
            raise ImageNotFound(f"no image with id {image_id} on system {system}")
        image = max(usable, key=lambda i: (i.state == ImageState.READY, bool(i.acl_key),
                                           i.last_pull))
        tag = image.tags[0] if image.tags else "<reference>"
        if image.state == ImageState.READY:
            self._refuse_missing(image, f"id:{image_id}", tag)
        self._check_policy(image, f"shifterimg -s {system} pull {tag}")
        self._note_use(image)
        return lookup_status(None, image, reference=image.tags[0] if image.tags else "",
                             system=system, expiration=self.config.image_expiration_timeout)

    def list_images(self, system: str, state: ImageState | None, page_size: int,
                    page_token: str, caller: Caller = ANONYMOUS_CALLER
                    ) -> tuple[list[ImageStatus], str]:
        """A page of the images the caller may see (admins: every image of the system)."""
        self.config.platform(system)
        viewer = None if caller.is_admin(system) else caller.viewer
        # The store checks page_size and page_token (InvalidRequest) and caps the size.
        images, token = self.store.list_images(system, state, page_size, page_token, viewer)
        statuses = [
            lookup_status(None, image, reference=image.tags[0] if image.tags else "",
                          system=system, expiration=self.config.image_expiration_timeout)
            for image in images
        ]
        return statuses, token

    def list_jobs(self, system: str | None, caller: Caller = ANONYMOUS_CALLER) -> list[PullRecord]:
        """Jobs in flight or failed, of public pulls and private ones the caller may see."""
        if system:
            self.config.platform(system)
        return [pull for pull in self.store.list_pulls(system)
                if (pull.state.in_flight or pull.state == ImageState.FAILED)
                and caller.can_see(pull.key.system, pull.key.acl_key, pull.user_acl,
                                   pull.group_acl)]

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
            if pull.key.reference.startswith(IMPORT_PREFIX):
                # An upload cannot resume: its bytes went with the connection.
                self.store.fail_pull(pull.key, pull.job_id, Failure.of(Cancelled(
                    "the import was interrupted by a gateway restart",
                    hint="import the image again")), now)
                continue
            self.queue.submit(QueuedJob(pull.job_id, pull.key.system, job_spec(
                pull.key, pull, policy_digest=self.policy_digest(pull.key.system))))
            resumed += 1
            log.info("resuming pull %s on %s (job %s) after restart", pull.key.reference,
                     pull.key.system, pull.job_id)
        return resumed


class PullWatch:
    """What one progress stream of a pull has told its caller, and what it says next.

    `PullManager.watch` drives it on a thread; an asynchronous edge drives it from an
    event loop, woken by the progress hub, calling `begin` and `reread` (which read
    the records, so they block) off the loop. When the job ends and a newer job of
    the same pull has begun meanwhile (another caller's re-check or retry), the
    stream follows that job (`job_id` changes: subscribe to it): it ends with the
    pull's outcome, never with the newer job's QUEUED state."""

    def __init__(self, pulls: PullManager, ticket: PullTicket) -> None:
        self.pulls = pulls
        self.key = ticket.key
        self.job_id = ticket.job_id
        self.done = False
        self._status: ImageStatus | None = None
        #: The last status this stream said (a progress event's, or the records').
        self._said: ImageStatus | None = None
        self._last_read = 0.0

    def begin(self) -> ImageStatus:
        """The pull's status now (blocks on the records)."""
        return self._read()

    def _read(self) -> ImageStatus:
        status = self.pulls.status(self.key)
        self._status = status
        self._said = status
        self._last_read = time.monotonic()
        if not status.state.in_flight:
            self.done = True
        return status

    def stale(self) -> bool:
        """Whether the records are due a re-read (no event came for a while)."""
        return self.seconds_to_stale() <= 0

    def seconds_to_stale(self) -> float:
        return self._last_read + WATCH_POLL_SECONDS - time.monotonic()

    def needs_store(self, event: ProgressEvent | None) -> bool:
        """Whether `event` (None: none came) must be answered by `reread` rather than
        `progress`."""
        return event is None or event.final or self.stale()

    def progress(self, event: ProgressEvent) -> ImageStatus:
        """The status a progress event makes (no I/O)."""
        assert self._status is not None, "begin() first"
        status = PullManager._progress_status(self._status, event)
        self._said = status
        return status

    def reread(self, event: ProgressEvent | None) -> list[ImageStatus]:
        """Reads the records after a final event or a quiet spell (blocks); the statuses
        to send, in order. Sets `done` at the outcome, and `job_id` to a newer job. In a
        quiet spell (no events: the broker may be away) the records' progress is sent
        when it moved."""
        previous, said = self._status, self._said
        status = self._read()
        if not status.state.in_flight:
            self.pulls._forget(self.key.system, self.key.reference)
            return [status]
        if status.pull is not None and status.pull.job_id != self.job_id:
            self.job_id = status.pull.job_id
            return [status]
        if event is not None and not event.final:
            return [self.progress(event)]
        if event is None and previous is not None and (
                (status.state, status.progress) != (previous.state, previous.progress)):
            if _behind(status, said):
                # The records keep progress once a second (dispatch.py); the events
                # this stream already said are newer: a bar never moves back.
                self._said = said
                return []
            return [status]
        return []


def _behind(status: ImageStatus, said: ImageStatus | None) -> bool:
    """Whether `status` (the records) says less of the same stage than `said` did."""
    if said is None or said.state != status.state:
        return False
    now, before = status.progress, said.progress
    return (now is not None and before is not None and now.stage == before.stage
            and now.bytes_done < before.bytes_done)
def split_image_name(text: str) -> tuple[str, str]:
    """(image id, runtime name) from an image id ("<hex>", "sha256:<hex>") or a runtime
    name ("<id>-<12 hex>", a private image's file stem); the name is "" for a bare id."""
    text = text.strip().removeprefix("sha256:").lower()
    image_id, dash, suffix = text.partition("-")
    if (not image_id or len(image_id) > 64 or not _is_hex(image_id)
            or (dash and (len(suffix) != SUFFIX_DIGITS or not _is_hex(suffix)))):
        raise InvalidRequest(f"invalid image id {text!r}",
                             hint="64 hex digits, or the name lookup printed (<id>-<12 hex>)")
    return image_id, (text if dash else "")


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def import_reference(tag: str) -> str:
    """"import/<name>:<tag>" for an import tag ("mytools:1.0"; the tag defaults to latest)."""
    name, _, version = tag.strip().partition(":")
    parsed = parse_reference(f"{name}:{version or 'latest'}",
                             Config(default_image_location="import"))
    if parsed.digest or parsed.location != "import":
        raise InvalidRequest(f"invalid import tag {tag!r}", hint="a name and tag like mytools:1.0")
    return f"{IMPORT_PREFIX}{parsed.repository}:{parsed.tag}"


def progress_event(state: ImageState, progress: Progress) -> ProgressEvent:
    return ProgressEvent(state=int(state), progress=progress)


def image_record_for(key: PullKey, pull: PullRecord, result, now: float) -> ImageRecord:
    """The image record a successful build result makes."""
    return ImageRecord(
        system=key.system, image_id=result.image_id, format=result.format,
        manifest_digest=result.manifest_digest, metadata=result.metadata,
        image_file=result.image_file, meta_file=result.meta_file, size_bytes=result.size_bytes,
        tags=(key.reference,), state=ImageState.READY, user_acl=pull.user_acl,
        group_acl=pull.group_acl, acl_key=key.acl_key, last_pull=now, last_used=now,
        extra=trust_extra(result.trust),
    )
