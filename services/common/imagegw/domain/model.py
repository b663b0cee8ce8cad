"""Plain data shared by the gateway and the worker: no grpc, no I/O."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from imagegw.domain.errors import kind_of


class Stage(enum.IntEnum):
    """Mirrors imagegw.v1.Stage."""

    UNSPECIFIED = 0
    QUEUED = 1
    RESOLVING = 2
    DOWNLOADING = 3
    CONVERTING = 4
    PUBLISHING = 5
    DONE = 6


class ImageState(enum.IntEnum):
    """Mirrors imagegw.v1.ImageState: Shifter's lifecycle."""

    UNSPECIFIED = 0
    QUEUED = 1
    PULLING = 2
    CONVERTING = 3
    TRANSFERRING = 4
    READY = 5
    FAILED = 6
    EXPIRED = 7

    @property
    def in_flight(self) -> bool:
        return self in (ImageState.QUEUED, ImageState.PULLING, ImageState.CONVERTING,
                        ImageState.TRANSFERRING)


STAGE_STATE = {
    Stage.QUEUED: ImageState.QUEUED,
    Stage.RESOLVING: ImageState.PULLING,
    Stage.DOWNLOADING: ImageState.PULLING,
    Stage.CONVERTING: ImageState.CONVERTING,
    Stage.PUBLISHING: ImageState.TRANSFERRING,
}


@dataclass(frozen=True)
class ImageMetadata:
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    #: The image's VOLUME paths (enroot binds them; Shifter ignores them).
    volumes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Progress:
    stage: Stage
    layer_index: int = 0
    layer_count: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (records, progress channels)."""
        return {"stage": int(self.stage), "layer_index": self.layer_index,
                "layer_count": self.layer_count, "bytes_done": self.bytes_done,
                "bytes_total": self.bytes_total, "message": self.message}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Progress:
        return cls(stage=Stage(data.get("stage", 0)), layer_index=data.get("layer_index", 0),
                   layer_count=data.get("layer_count", 0), bytes_done=data.get("bytes_done", 0),
                   bytes_total=data.get("bytes_total", 0), message=data.get("message", ""))


@dataclass(frozen=True)
class Failure:
    """A failed job: the kind of error in the tree of `imagegw.domain.errors` (its class
    name, e.g. "RegistryAuthFailed"; INTERNAL_KIND for a bug) and a message a person can
    act on. The edges map the kind to their status codes."""

    kind: str
    message: str

    @classmethod
    def of(cls, error: BaseException, message: str | None = None) -> Failure:
        return cls(kind_of(error), str(error) if message is None else message)


@dataclass(frozen=True)
class RegistryCredentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"RegistryCredentials(username={self.username!r}, password='***')"


@dataclass(frozen=True)
class ImageSigner:
    """Who signed an image the site's policy accepted: "gpg" (the key's fingerprint) or
    "sigstore" (sha256 of the public key), and the identity the signature claims."""

    kind: str
    fingerprint: str
    identity: str


@dataclass(frozen=True)
class ImageTrust:
    """The signature policy's verdict on an image: the policy's digest, the scope that
    applied, and one signer per signature requirement of that scope."""

    policy_digest: str
    scope: str
    signers: tuple[ImageSigner, ...] = ()


@dataclass(frozen=True)
class BuildJob:
    """What the gateway asks a worker to do."""

    job_id: str
    system: str
    reference: str
    format: str = ""
    user_acl: tuple[int, ...] = ()
    group_acl: tuple[int, ...] = ()
    credentials: RegistryCredentials | None = None
    known_manifest_digest: str = ""
    #: The digest of the signature policy the gateway expects the worker to judge by.
    policy_digest: str = ""


@dataclass(frozen=True)
class BuildResult:
    image_id: str
    manifest_digest: str
    format: str
    metadata: ImageMetadata
    image_file: str
    meta_file: str
    size_bytes: int
    reference: str = ""
    reused: bool = False
    unchanged: bool = False
    #: The signature policy's verdict, when the system has a policy.
    trust: ImageTrust | None = None


@dataclass(frozen=True)
class BuildEvent:
    """One thing a build job reports: progress, or its final result or failure."""

    progress: Progress | None = None
    result: BuildResult | None = None
    failure: Failure | None = None

    @property
    def final(self) -> bool:
        return self.result is not None or self.failure is not None
