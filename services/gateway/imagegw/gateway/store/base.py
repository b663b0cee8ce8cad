"""The ImageStore protocol: what every record backend (SQLite, MongoDB) provides.

All methods are thread-safe and atomic on their own. Times are epoch seconds
passed in by the caller (the store never reads the clock), so tests control time.
"""

from __future__ import annotations

from typing import Protocol

from imagegw.domain.errors import BackendUnavailable
from imagegw.domain.model import Failure, ImageState, Progress
from imagegw.gateway.records import ImageRecord, PullKey, PullRecord

#: Who is listing: (uid, gids). Sees public images and private ones whose ACL names
#: the uid or one of the gids. None (in list_images) means everything (admins).
Viewer = tuple[int, tuple[int, ...]]


class StoreUnavailable(BackendUnavailable):
    """The record store could not be reached or refused the operation.

    Raised by every backend in place of its own driver errors (sqlite3, pymongo),
    which are kept as `__cause__`. Trying again later may succeed."""

    retryable = True


class ImageStore(Protocol):
    """Pull and image records of every system.

    The job_id-guarded methods (update_pull, note_attempt, complete_pull,
    fail_pull, refresh_pull) change nothing unless the pull is still in flight
    under that job_id: a job that was superseded or already finished is stale."""

    def begin_pull(
        self, key: PullKey, job_id: str, now: float, *, requester_uid: int = -1,
        user_acl: tuple[int, ...] = (), group_acl: tuple[int, ...] = (),
        keep_ready_since: float | None = None,
    ) -> tuple[PullRecord, bool]:
        """Starts a pull unless one is in flight for `key`, atomically.

        Returns (record, True) when this call created or restarted the pull (state
        QUEUED, job_id set, attempts reset to 0, failure cleared, image_id kept),
        or (the in-flight record, False) when a pull for `key` was already QUEUED,
        PULLING, CONVERTING or TRANSFERRING. Of many concurrent callers exactly
        one gets True. With `keep_ready_since`, a READY record whose ready_time is
        later than that is kept too: (that record, False) — a pull that finished
        between the caller's read and this call answers it."""
        ...

    def get_pull(self, key: PullKey) -> PullRecord | None:
        """The pull record for `key`, or None when it was never pulled."""
        ...

    def update_pull(
        self, key: PullKey, job_id: str, state: ImageState, progress: Progress | None,
        now: float,
    ) -> bool:
        """Moves an in-flight pull to `state` with `progress`; only if job_id matches
        and the pull is still in flight. Returns whether it changed anything."""
        ...

    def note_attempt(self, key: PullKey, job_id: str, now: float) -> int:
        """Counts one more start of the job (attempts += 1, started = now); returns
        the new count. No-op returning 0 when job_id does not match."""
        ...

    def complete_pull(self, key: PullKey, job_id: str, image: ImageRecord, now: float) -> bool:
        """Finishes a pull: upserts `image` (by system + image_id + acl_key, keeping the
        union of tags), moves the tag `key.reference` to it (removing the tag from
        every other image of the system with the same acl_key), and sets the pull
        READY with image_id, ready_time = now, failure cleared. Only if job_id
        matches; returns whether it did."""
        ...

    def fail_pull(self, key: PullKey, job_id: str, failure: Failure, now: float) -> bool:
        """Sets the pull FAILED with the cause (image_id kept). Only if job_id matches."""
        ...

    def refresh_pull(self, key: PullKey, job_id: str, now: float) -> bool:
        """Ends a re-check that found the image unchanged: READY again,
        ready_time = now, failure cleared. Only if job_id matches."""
        ...

    def in_flight_pulls(self) -> list[PullRecord]:
        """Every pull in QUEUED..TRANSFERRING (for recovery after a restart)."""
        ...

    def list_pulls(self, system: str | None = None) -> list[PullRecord]:
        """All pull records (optionally of one system), newest update first."""
        ...

    def pulls_of(self, system: str, reference: str) -> list[PullRecord]:
        """Every pull record of `reference` on `system`, public and private (any acl_key)."""
        ...

    def get_image(self, system: str, image_id: str, acl_key: str = "") -> ImageRecord | None:
        """The image (system, image_id, acl_key) (old ids stay resolvable), or None.

        An image's identity includes its acl_key: the public and each private copy of
        one image id are separate records."""
        ...

    def find_images(self, system: str, image_id: str) -> list[ImageRecord]:
        """Every record (public and private) of an image id on `system`."""
        ...

    def list_images(
        self, system: str, state: ImageState | None, page_size: int, page_token: str,
        viewer: Viewer | None = None,
    ) -> tuple[list[ImageRecord], str]:
        """A page of a system's images ordered by last_pull descending, then id and
        acl_key; state None means every state but EXPIRED; with `viewer`, only the
        images that viewer may see. Returns (images, next_token), next_token "" on the
        last page. Tokens are opaque strings."""
        ...

    def touch_image(self, system: str, image_id: str, now: float, acl_key: str = "") -> None:
        """Records a use (lookup) of an image: last_used = now."""
        ...

    def set_image_state(self, system: str, image_id: str, state: ImageState,
                        acl_key: str = "") -> bool:
        """Sets an image's state; returns whether the image exists."""
        ...

    def expire_image(self, system: str, image_id: str, acl_key: str,
                     used_before: float | None = None) -> ImageRecord | None:
        """Moves a READY image to EXPIRED, atomically, only if it is READY and (when
        `used_before` is given) last used before then. Returns the image as it was,
        or None when nothing changed."""
        ...

    def expirable_images(self, system: str, used_before: float) -> list[ImageRecord]:
        """The READY images of `system` last used before `used_before`, oldest first."""
        ...

    def claim_target(self, system: str, target: str) -> str:
        """Records `target` (where a system's images go, opaque text) as the deployment
        this store's records of `system` belong to, unless one is recorded already;
        returns the recorded one. Atomic: of concurrent callers, the first one wins."""
        ...

    def set_target(self, system: str, target: str) -> None:
        """Records `target` for `system`, replacing what was there (an admin moved it)."""
        ...

    def ping(self) -> bool:
        """Whether the store answers right now (for health checks); never raises."""
        ...

    def close(self) -> None:
        """Releases connections; the store must not be used afterwards."""
        ...
