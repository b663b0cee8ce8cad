"""Records <-> plain documents (dicts of JSON types), shared by every store backend.

Both the SQLite columns (JSON text) and the MongoDB documents use these shapes,
so one record reads back the same from either backend.
"""

from __future__ import annotations

from typing import Any

from imagegw.domain.errors import INTERNAL_KIND
from imagegw.domain.model import Failure, ImageMetadata, ImageState, Progress
from imagegw.gateway.records import ImageRecord, PullKey, PullRecord

IN_FLIGHT_STATES: tuple[int, ...] = tuple(int(s) for s in ImageState if s.in_flight)


def progress_to_doc(progress: Progress | None) -> dict[str, Any] | None:
    return None if progress is None else progress.to_dict()


def progress_from_doc(doc: dict[str, Any] | None) -> Progress | None:
    return None if doc is None else Progress.from_dict(doc)


def failure_to_doc(failure: Failure | None) -> dict[str, Any] | None:
    return None if failure is None else {"kind": failure.kind, "message": failure.message}


#: Records written before error kinds kept a status number (google.rpc.Code numbering).
_KIND_OF_LEGACY_CODE = {
    1: "Cancelled", 3: "InvalidRequest", 5: "ImageNotFound", 7: "PermissionDenied",
    8: "ResourceExhausted", 9: "ContentRejected", 14: "WorkerUnavailable", 15: "DigestMismatch",
    16: "Unauthenticated",
}


def failure_from_doc(doc: dict[str, Any] | None) -> Failure | None:
    if doc is None:
        return None
    kind = doc.get("kind") or _KIND_OF_LEGACY_CODE.get(doc.get("code", 0), INTERNAL_KIND)
    return Failure(kind=kind, message=doc["message"])


def metadata_to_doc(metadata: ImageMetadata) -> dict[str, Any]:
    return {
        "env": list(metadata.env), "entrypoint": list(metadata.entrypoint),
        "cmd": list(metadata.cmd), "workdir": metadata.workdir, "user": metadata.user,
        "labels": dict(metadata.labels),
    }


def metadata_from_doc(doc: dict[str, Any]) -> ImageMetadata:
    return ImageMetadata(
        env=tuple(doc.get("env", ())), entrypoint=tuple(doc.get("entrypoint", ())),
        cmd=tuple(doc.get("cmd", ())), workdir=doc.get("workdir", ""),
        user=doc.get("user", ""), labels=dict(doc.get("labels", {})),
    )


def pull_from_doc(doc: dict[str, Any]) -> PullRecord:
    """A PullRecord from a document holding every pull field (extra keys ignored)."""
    return PullRecord(
        key=PullKey(doc["system"], doc["reference"], doc["acl_key"]),
        state=ImageState(doc["state"]),
        job_id=doc["job_id"],
        image_id=doc.get("image_id", ""),
        failure=failure_from_doc(doc.get("failure")),
        progress=progress_from_doc(doc.get("progress")),
        user_acl=tuple(doc.get("user_acl", ())),
        group_acl=tuple(doc.get("group_acl", ())),
        requester_uid=doc.get("requester_uid", -1),
        attempts=doc.get("attempts", 0),
        created=doc.get("created", 0.0),
        started=doc.get("started", 0.0),
        updated=doc.get("updated", 0.0),
        ready_time=doc.get("ready_time", 0.0),
    )


def image_to_doc(image: ImageRecord) -> dict[str, Any]:
    """Every field of an image as a document (tags as a list)."""
    return {
        "system": image.system, "image_id": image.image_id, "format": image.format,
        "manifest_digest": image.manifest_digest,
        "metadata": metadata_to_doc(image.metadata),
        "image_file": image.image_file, "meta_file": image.meta_file,
        "size_bytes": image.size_bytes, "tags": list(image.tags), "state": int(image.state),
        "user_acl": list(image.user_acl), "group_acl": list(image.group_acl),
        "acl_key": image.acl_key, "last_pull": image.last_pull, "last_used": image.last_used,
        "extra": dict(image.extra),
    }


def image_from_doc(doc: dict[str, Any]) -> ImageRecord:
    return ImageRecord(
        system=doc["system"], image_id=doc["image_id"], format=doc["format"],
        manifest_digest=doc["manifest_digest"], metadata=metadata_from_doc(doc["metadata"]),
        image_file=doc["image_file"], meta_file=doc["meta_file"],
        size_bytes=doc["size_bytes"], tags=tuple(doc.get("tags", ())),
        state=ImageState(doc["state"]), user_acl=tuple(doc.get("user_acl", ())),
        group_acl=tuple(doc.get("group_acl", ())), acl_key=doc.get("acl_key", ""),
        last_pull=doc.get("last_pull", 0.0), last_used=doc.get("last_used", 0.0),
        extra=dict(doc.get("extra", {})),
    )


def merged_tags(existing: tuple[str, ...] | list[str], *more: str) -> list[str]:
    """The union of tags, first-seen order kept."""
    return list(dict.fromkeys([*existing, *more]))
