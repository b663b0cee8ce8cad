"""What the Shifter REST API answers, as plain JSON-ready data: image objects in the
shape of Shifter's `create_response`, its status words, and the one table from our
error tree to HTTP statuses. Pure functions; no aiohttp here."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from imagegw.domain import errors
from imagegw.domain.model import ImageState
from imagegw.gateway.core.views import ImageStatus
from imagegw.gateway.records import PullRecord

#: Our states as the words Shifter's clients know. Its C client polls a pull while the
#: word is one of MISSING, INIT, PENDING, PULLING, EXAMINATION, CONVERSION, TRANSFER.
STATUS_WORDS = {
    ImageState.UNSPECIFIED: "MISSING",
    ImageState.QUEUED: "PENDING",
    ImageState.PULLING: "PULLING",
    ImageState.CONVERTING: "CONVERSION",
    ImageState.TRANSFERRING: "TRANSFER",
    ImageState.READY: "READY",
    ImageState.FAILED: "FAILURE",
    ImageState.EXPIRED: "EXPIRED",
}

#: HTTP status of each error of our tree (the most specific class listed wins).
ERROR_HTTP_STATUS: dict[type[errors.ImageGatewayError], HTTPStatus] = {
    errors.InvalidRequest: HTTPStatus.BAD_REQUEST,
    errors.ContentRejected: HTTPStatus.BAD_REQUEST,
    errors.UnknownSystem: HTTPStatus.NOT_FOUND,
    errors.ImageNotFound: HTTPStatus.NOT_FOUND,
    errors.Unauthenticated: HTTPStatus.UNAUTHORIZED,
    errors.PermissionDenied: HTTPStatus.FORBIDDEN,
    errors.RegistryAuthFailed: HTTPStatus.FORBIDDEN,
    errors.ResourceExhausted: HTTPStatus.TOO_MANY_REQUESTS,
    errors.RegistryUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    errors.AuthServiceUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    errors.WorkerUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    errors.BackendUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    errors.TransferFailed: HTTPStatus.SERVICE_UNAVAILABLE,
}

_HUB_PREFIXES = ("registry-1.docker.io/", "index.docker.io/", "docker.io/")


def http_status_for(error: BaseException) -> HTTPStatus:
    for cls in type(error).__mro__:
        if cls in ERROR_HTTP_STATUS:
            return ERROR_HTTP_STATUS[cls]
    return HTTPStatus.INTERNAL_SERVER_ERROR


def error_body(status: HTTPStatus, message: str) -> dict[str, Any]:
    """Shifter's error object: the number, the reason phrase, what to do about it."""
    return {"status": int(status), "error": status.phrase, "message": message}


def display_tag(reference: str) -> str:
    """A normalized reference as Shifter users write it: Docker Hub's host and
    "library/" left out ("registry-1.docker.io/library/ubuntu:24.04" -> "ubuntu:24.04")."""
    for prefix in _HUB_PREFIXES:
        if reference.startswith(prefix):
            return reference[len(prefix):].removeprefix("library/")
    return reference


def image_object(status: ImageStatus) -> dict[str, Any]:
    """One image as Shifter's API returns it. `id` is the runtime name (the stem of the
    image's files); `last_pull` is always a JSON number with a fraction."""
    image, pull = status.image, status.pull
    tags = image.tags if image is not None and image.tags else (status.reference,)
    users = image.user_acl if image is not None else pull.user_acl if pull else ()
    groups = image.group_acl if image is not None else pull.group_acl if pull else ()
    meta = image.metadata if image is not None else None
    last_pull = image.last_pull if image is not None else pull.updated if pull else 0.0
    failure = status.failure
    return {
        "id": image.name if image is not None else "",
        "system": status.system,
        "itype": "docker",
        "tag": [display_tag(tag) for tag in tags],
        "status": STATUS_WORDS.get(status.state, "MISSING"),
        "userACL": list(users),
        "groupACL": list(groups),
        "ENV": list(meta.env) if meta else [],
        "ENTRY": list(meta.entrypoint) if meta else [],
        "WORKDIR": meta.workdir if meta else "",
        "LABELS": dict(meta.labels) if meta else {},
        "last_pull": float(last_pull),
        "status_message": failure.message if failure is not None else
        (status.progress.message if status.progress is not None else ""),
    }


def queue_entry(pull: PullRecord) -> dict[str, Any]:
    """One pull of `GET /api/queue/<system>/`, as Shifter's show_queue lists it."""
    return {"status": STATUS_WORDS.get(pull.state, "MISSING"),
            "image": display_tag(pull.key.reference)}
