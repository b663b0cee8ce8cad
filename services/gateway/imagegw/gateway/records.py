"""The gateway's records, as plain data: pulls (one per system+reference) and
images (one per system+image id). Stores persist them; the core decides."""

from __future__ import annotations

from dataclasses import dataclass, field

from imagegw.domain.model import Failure, ImageMetadata, ImageState, Progress


@dataclass(frozen=True)
class PullKey:
    """Identifies one pull target: a normalized reference on one system.

    `acl_key` separates private pulls from public ones ("" for public)."""

    system: str
    reference: str
    acl_key: str = ""


@dataclass(frozen=True)
class PullRecord:
    """The state of the latest pull of a reference on a system."""

    key: PullKey
    state: ImageState
    job_id: str
    #: The image the reference currently points at (set once a pull succeeded).
    image_id: str = ""
    failure: Failure | None = None
    progress: Progress | None = None
    user_acl: tuple[int, ...] = ()
    group_acl: tuple[int, ...] = ()
    #: uid of whoever started the current pull (-1 when unknown).
    requester_uid: int = -1
    attempts: int = 0
    created: float = 0.0
    started: float = 0.0
    updated: float = 0.0
    #: When the pull last became READY (drives PullUpdateTimeout).
    ready_time: float = 0.0


@dataclass(frozen=True)
class ImageRecord:
    """A built image on one system. Old ids stay resolvable after a tag moves."""

    system: str
    image_id: str
    format: str
    manifest_digest: str
    metadata: ImageMetadata
    image_file: str
    meta_file: str
    size_bytes: int
    #: Normalized references currently pointing at this image.
    tags: tuple[str, ...] = ()
    state: ImageState = ImageState.READY
    user_acl: tuple[int, ...] = ()
    group_acl: tuple[int, ...] = ()
    acl_key: str = ""
    last_pull: float = 0.0
    #: Last pull or lookup; expiry counts from here.
    last_used: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The stem of the image's files, which the runtime opens as `<name>.meta` and
        `<name>.<format>`: the id, with the ACL suffix for a private image."""
        stem, dot, _extension = self.image_file.rpartition(".")
        return stem if dot and stem else self.image_id
