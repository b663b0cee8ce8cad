"""What the SDK returns: plain frozen dataclasses, and their conversion from protos.

Enum values become short upper-case names ("READY", "DOWNLOADING"); timestamps
become timezone-aware UTC datetimes, or None when the gateway did not set them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from imagegw.v1 import gateway_service_pb2 as gw_pb2
from imagegw.v1 import image_pb2

IMAGE_STATES = ("QUEUED", "PULLING", "CONVERTING", "TRANSFERRING", "READY", "FAILED", "EXPIRED")


@dataclass(frozen=True)
class SignerInfo:
    """Who signed an image the site's signature policy accepted."""

    #: "gpg" or "sigstore".
    kind: str
    #: The OpenPGP key fingerprint, or the sha256 (hex) of the sigstore public key.
    fingerprint: str
    #: The identity (docker-reference) the signature claims.
    identity: str


@dataclass(frozen=True)
class ImageInfo:
    """An image record on one system."""

    id: str
    system: str
    type: str
    reference: str
    tags: tuple[str, ...]
    #: "QUEUED", "PULLING", "CONVERTING", "TRANSFERRING", "READY", "FAILED" or "EXPIRED".
    state: str
    manifest_digest: str = ""
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    user_acl: tuple[int, ...] = ()
    group_acl: tuple[int, ...] = ()
    format: str = ""
    size_bytes: int = 0
    last_pull: datetime | None = None
    expire_time: datetime | None = None
    #: Why the last pull failed ("" unless state is "FAILED").
    failure_message: str = ""
    #: The gRPC code name of the failure ("" unless state is "FAILED").
    failure_code: str = ""
    #: The image file name in the system's image directory ("<id>.squashfs").
    image_file: str = ""
    #: The signature policy the image was accepted by ("sha256:<hex>"; "" without a policy),
    #: the scope that applied and who signed it (one signer per signature requirement).
    signature_policy_digest: str = ""
    signature_scope: str = ""
    signers: tuple[SignerInfo, ...] = ()
    #: What the runtime opens: `<name>.squashfs` and `<name>.meta` in the image directory
    #: (the id; "<id>-<12 hex>" for a private image). What `shifterimg lookup` prints.
    name: str = ""

    def runtime_path(self, runtime: str, image_dir: str) -> str:
        """The path of the file `runtime` ("shifter", "enroot", "apptainer",
        "singularity") runs, in `image_dir` as the nodes see it (client.runtimes)."""
        from imagegw.client.runtimes import runtime_path

        return runtime_path(self.image_file, runtime, image_dir)


@dataclass(frozen=True)
class PullUpdate:
    """One message of a pull stream: the record as it stands and the job's progress."""

    image: ImageInfo
    #: "QUEUED", "RESOLVING", "DOWNLOADING", "CONVERTING", "PUBLISHING", "DONE" or "".
    stage: str = ""
    layer_index: int = 0
    layer_count: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    message: str = ""


@dataclass(frozen=True)
class JobInfo:
    """A job in the gateway's queue."""

    id: str
    system: str
    reference: str
    #: "WAITING", "RUNNING", "SUCCEEDED" or "FAILED".
    state: str
    stage: str = ""
    progress_message: str = ""
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    failure_message: str = ""
    attempts: int = 0


def _enum_name(enum_type: object, value: int, prefix: str) -> str:
    try:
        name: str = enum_type.Name(value)  # type: ignore[attr-defined]
    except ValueError:
        return str(value)
    name = name.removeprefix(prefix)
    return "" if name == "UNSPECIFIED" else name


def image_state_name(value: int) -> str:
    return _enum_name(image_pb2.ImageState, value, "IMAGE_STATE_")


def image_state_value(name: str) -> image_pb2.ImageState.ValueType:
    """The proto value of a state name such as "READY" (case-insensitive)."""
    if name.upper() not in IMAGE_STATES:
        raise ValueError(f"unknown image state {name!r}; expected one of {', '.join(IMAGE_STATES)}")
    return image_pb2.ImageState.Value("IMAGE_STATE_" + name.upper())


def _stage_name(value: int) -> str:
    return _enum_name(image_pb2.Stage, value, "STAGE_")


def _time(message: object, name: str) -> datetime | None:
    if not message.HasField(name):  # type: ignore[attr-defined]
        return None
    stamp: Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=UTC)


def _status_name(code: int) -> str:
    # google.rpc.Code numbering is the same as grpc.StatusCode's.
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return "UNKNOWN"


def image_from_proto(image: image_pb2.Image) -> ImageInfo:
    meta = image.metadata
    failed = image.HasField("failure")
    return ImageInfo(
        id=image.id,
        system=image.system,
        type=image.type,
        reference=image.reference,
        tags=tuple(image.tags),
        state=image_state_name(image.state),
        manifest_digest=image.manifest_digest,
        env=tuple(meta.env),
        entrypoint=tuple(meta.entrypoint),
        cmd=tuple(meta.cmd),
        workdir=meta.workdir,
        user=meta.user,
        labels=dict(meta.labels),
        user_acl=tuple(image.user_acl),
        group_acl=tuple(image.group_acl),
        format=image.format,
        size_bytes=image.size_bytes,
        last_pull=_time(image, "last_pull_time"),
        expire_time=_time(image, "expire_time"),
        failure_message=image.failure.message if failed else "",
        failure_code=_status_name(image.failure.code) if failed else "",
        image_file=image.image_file,
        signature_policy_digest=image.trust.policy_digest,
        signature_scope=image.trust.scope,
        signers=tuple(SignerInfo(s.kind, s.fingerprint, s.identity) for s in image.trust.signers),
        name=image.name or image.id,
    )


def update_from_proto(response: gw_pb2.PullImageResponse) -> PullUpdate:
    progress = response.progress if response.HasField("progress") else response.image.progress
    return PullUpdate(
        image=image_from_proto(response.image),
        stage=_stage_name(progress.stage),
        layer_index=progress.layer_index,
        layer_count=progress.layer_count,
        bytes_done=progress.bytes_done,
        bytes_total=progress.bytes_total,
        message=progress.message,
    )


def job_from_proto(job: gw_pb2.Job) -> JobInfo:
    return JobInfo(
        id=job.id,
        system=job.system,
        reference=job.reference,
        state=_enum_name(gw_pb2.JobState, job.state, "JOB_STATE_"),
        stage=_stage_name(job.progress.stage),
        progress_message=job.progress.message,
        create_time=_time(job, "create_time"),
        start_time=_time(job, "start_time"),
        end_time=_time(job, "end_time"),
        failure_message=job.failure.message if job.HasField("failure") else "",
        attempts=job.attempts,
    )
