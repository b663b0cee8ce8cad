"""The Shifter REST API's operations, synchronous: authenticate, parse, call the core
(the same PullManager, Expirer, Importer and Logins the gRPC servicer calls), shape.

Each method takes the request's pieces as plain values and returns a JSON-ready
object or raises from our error tree; `routes` runs them off the event loop and turns
errors into HTTP answers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from imagegw.domain.config import Config
from imagegw.domain.errors import ImageNotFound, InvalidRequest, PermissionDenied
from imagegw.domain.model import ImageMetadata, ImageState
from imagegw.gateway.auth import MungeDecoder
from imagegw.gateway.core import audit
from imagegw.gateway.core.access import Caller
from imagegw.gateway.core.callers import authenticate_caller
from imagegw.gateway.core.expiry import Expirer
from imagegw.gateway.core.fairshare import Admission
from imagegw.gateway.core.imports import Importer, ImportHeader
from imagegw.gateway.core.logins import Logins
from imagegw.gateway.core.pulls import PullManager, PullRequest
from imagegw.gateway.core.views import lookup_status
from imagegw.gateway.rest.shapes import STATUS_WORDS, display_tag, image_object, queue_entry

__all__ = ["RestApi", "RestServices"]

log = logging.getLogger(__name__)

MAX_FIELD = 1024
MAX_ACL_ENTRIES = 256
#: Seconds a failed pull answers FAILURE to re-sent pulls instead of starting again:
#: Shifter's client re-POSTs every 0.5 s until the status leaves the pulling words.
FAILURE_HOLD_SECONDS = 30.0
#: Bytes read at a time from an imported file.
IMPORT_CHUNK = 1024 * 1024
#: Image types Shifter's clients send; "docker" is the only one that pulls.
_LOOKUP_TYPES = ("docker", "custom", "id")


@dataclass(frozen=True)
class RestServices:
    """The core objects the REST API calls (those of the gRPC servicer)."""

    config: Config
    pulls: PullManager
    expirer: Expirer
    importer: Importer
    logins: Logins


def _check_fields(**fields: str) -> None:
    for name, value in fields.items():
        if len(value) > MAX_FIELD:
            raise InvalidRequest(f"{name} is longer than {MAX_FIELD} characters")


def _reference(itype: str, tag: str) -> str:
    """The tag as the core takes it, with Shifter's implicit ":latest"."""
    _check_fields(type=itype, tag=tag)
    if not tag.strip():
        raise InvalidRequest("the image tag is empty", hint="e.g. /api/pull/<system>/docker/"
                                                           "ubuntu%3A24.04/")
    return tag


def _ids(data: dict[str, Any], key: str) -> tuple[int, ...]:
    """uids or gids from Shifter's comma-separated string ("1000,1001")."""
    value = data.get(key)
    if value is None or value == "":
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidRequest(f'{key} must be a string of comma-separated numbers, like '
                             f'"1000,1001"')
    ids = []
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) > 0xFFFFFFFE:
            raise InvalidRequest(f"{key}: {part!r} is not a uid/gid number",
                                 hint='send numbers separated by commas, like "1000,1001"')
        ids.append(int(part))
    return tuple(dict.fromkeys(ids))


def _json_body(body: bytes) -> dict[str, Any]:
    """The request body: empty, or a JSON object."""
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the request body is not JSON: {exc}",
                             hint='send {"allowed_uids": "1000", "allowed_gids": "100"} '
                                  "or nothing") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return data


def _offered_logins(payload: bytes) -> dict[str, tuple[str, str]]:
    """{location: (user, password)} from a MUNGE payload `{"authorized_locations":
    {"<location>": "user:password"}}`; {} for an empty payload."""
    if not payload.strip():
        return {}
    try:
        data = json.loads(payload)
        locations = data.get("authorized_locations", {})
    except (ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise InvalidRequest('the MUNGE payload must be empty or JSON {"authorized_locations":'
                             ' {"<location>": "user:password"}}') from exc
    if not isinstance(locations, dict):
        raise InvalidRequest("authorized_locations in the MUNGE payload must be an object")
    offered = {}
    for location, login in locations.items():
        user, colon, password = login.partition(":") if isinstance(login, str) else ("", "", "")
        if not colon or not user:
            raise InvalidRequest(f"authorized_locations[{location!r}] must be "
                                 '"user:password"', hint="run shifterimg login again")
        offered[location] = (user, password)
    return offered


class RestApi:
    def __init__(self, services: RestServices) -> None:
        self.config = services.config
        self.pulls = services.pulls
        self.expirer = services.expirer
        self.importer = services.importer
        self.logins = services.logins
        #: One MungeDecoder per socket path, shared by every call.
        self._decoders: dict[str, MungeDecoder] = {}

    # -- authentication -----------------------------------------------------------

    def authenticate(self, system: str, credentials: Sequence[str],
                     admission: Admission | None = None) -> tuple[Caller, bytes]:
        """The caller and the payload of the `authentication` headers (none: anonymous),
        decoded by the munged of `system`, as the gRPC edge does; the call is charged to
        the verified uid on `admission` (the fair share every edge counts)."""
        _check_fields(system=system)
        return authenticate_caller([("authentication", value) for value in credentials],
                                   system, self.config.platform(system), self._decoders,
                                   admission)

    # -- routes ------------------------------------------------------------------------

    def lookup(self, system: str, itype: str, tag: str, credentials: Sequence[str],
               admission: Admission | None = None) -> dict:
        reference = _reference(itype, tag)
        caller, _payload = self.authenticate(system, credentials, admission)
        if itype not in _LOOKUP_TYPES:
            raise InvalidRequest(f"unsupported image type {itype!r}",
                                 hint="look up docker images, or an image by id")
        status = self.pulls.lookup(system, "docker" if itype == "custom" else itype,
                                   reference, caller)
        if status.state != ImageState.READY or status.image is None:
            cause = f": {status.failure.message}" if status.failure is not None else ""
            raise ImageNotFound(
                f"image {display_tag(status.reference) or tag} is not ready on system {system} "
                f"(status {STATUS_WORDS.get(status.state, 'MISSING')}{cause})",
                hint=f"pull it: shifterimg -s {system} pull {tag}")
        return image_object(status)

    def pull(self, system: str, itype: str, tag: str, credentials: Sequence[str],
             body: bytes, admission: Admission | None = None) -> dict:
        reference = _reference(itype, tag)
        data = _json_body(body)
        users, groups = _ids(data, "allowed_uids"), _ids(data, "allowed_gids")
        if len(users) + len(groups) > MAX_ACL_ENTRIES:
            raise InvalidRequest(f"at most {MAX_ACL_ENTRIES} users and groups in an ACL")
        caller, payload = self.authenticate(system, credentials, admission)
        offered = _offered_logins(payload)
        log.debug("REST pull of %s by %s: logins offered for %s", reference, caller.label(),
                  ", ".join(sorted(offered)) or "no location")
        # New registry credentials deserve a new try, even right after a failure.
        new_login = bool(offered) and self.logins.adopt(
            caller, self.pulls.normalize(system, itype, reference), offered)
        request = PullRequest(system=system, reference=reference, image_type=itype,
                              user_acl=users, group_acl=groups,
                              failure_hold=0.0 if new_login else FAILURE_HOLD_SECONDS)
        with audit.audited("pull", caller, system=system, image=reference,
                           api="rest") as details:
            ticket = self.pulls.request_pull(request, caller)
            details.update(job=ticket.job_id, private=bool(ticket.key.acl_key),
                           outcome="fresh" if ticket.fresh else
                           "started" if ticket.started else "joined")
        status = ticket.answer or self.pulls.status(ticket.key)
        return image_object(status)

    def list_images(self, system: str, credentials: Sequence[str],
               admission: Admission | None = None) -> dict:
        caller, _payload = self.authenticate(system, credentials, admission)
        images: list[dict] = []
        token = ""
        while True:
            statuses, token = self.pulls.list_images(system, ImageState.READY, 1000, token,
                                                     caller)
            images.extend(image_object(status) for status in statuses)
            if not token:
                return {"list": images}

    def queue(self, system: str, credentials: Sequence[str],
               admission: Admission | None = None) -> dict:
        caller, _payload = self.authenticate(system, credentials, admission)
        return {"list": [queue_entry(pull) for pull in self.pulls.list_jobs(system, caller)]}

    def expire(self, system: str, itype: str, tag: str, credentials: Sequence[str],
               admission: Admission | None = None) -> dict:
        reference = _reference(itype, tag)
        caller, _payload = self.authenticate(system, credentials, admission)
        with audit.audited("expire", caller, system=system, image=reference,
                           api="rest") as details:
            expired = self.expirer.expire_image(system, itype, reference, caller)
            details["image_ids"] = [image.image_id for image in expired]
        image = self.pulls.store.get_image(system, expired[0].image_id,
                                           expired[0].acl_key) or expired[0]
        status = lookup_status(None, image, reference=image.tags[0] if image.tags else reference,
                               system=system, expiration=self.config.image_expiration_timeout)
        return {"status": True, "expired": [image.name for image in expired],
                "image": image_object(status)}

    def autoexpire(self, system: str, credentials: Sequence[str],
               admission: Admission | None = None) -> dict:
        caller, _payload = self.authenticate(system, credentials, admission)
        with audit.audited("expire-unused", caller, system=system, api="rest") as details:
            expired = self.expirer.expire_unused(system, caller)
            details["image_ids"] = [image.image_id for image in expired]
        return {"status": [image.name for image in expired]}

    def doimport(self, system: str, itype: str, tag: str, credentials: Sequence[str],
                 body: bytes, admission: Admission | None = None) -> dict:
        """Imports a squashfs file that is on the gateway host (Shifter's doimport). The
        file must be the caller's own (or the caller an admin): the gateway never reads
        a file for someone who could not read it themselves as its owner."""
        reference = _reference(itype, tag)
        data = _json_body(body)
        path, image_format = data.get("filepath"), data.get("format")
        if not isinstance(path, str) or not path:
            raise InvalidRequest("filepath is required: the squashfs file on the gateway host")
        if not isinstance(image_format, str) or not image_format:
            raise InvalidRequest('format is required (e.g. "squashfs")')
        users, groups = _ids(data, "allowed_uids"), _ids(data, "allowed_gids")
        if len(users) + len(groups) > MAX_ACL_ENTRIES:
            raise InvalidRequest(f"at most {MAX_ACL_ENTRIES} users and groups in an ACL")
        caller, _payload = self.authenticate(system, credentials, admission)
        probe = ImportHeader(system=system, tag=reference, format=image_format, size_bytes=1,
                             sha256="0" * 64, metadata=ImageMetadata())
        self.importer.check_header(probe, caller)  # who may import, before any file is opened
        with _open_import(path, caller, system) as (handle, size, digest):
            header = ImportHeader(system=system, tag=reference, format=image_format,
                                  size_bytes=size, sha256=digest, metadata=ImageMetadata(),
                                  user_acl=users, group_acl=groups)
            with audit.audited("import", caller, system=system, image=f"import/{reference}",
                               api="rest", path=path) as details:
                status = self.importer.import_image(header, _chunks(handle), caller)
                details.update(image_id=status.image.image_id if status.image else "",
                               size=size)
        return image_object(status)


@contextlib.contextmanager
def _open_import(path: str, caller: Caller, system: str) -> Iterator[tuple[Any, int, str]]:
    """The file at `path` (absolute, a regular file, not a symlink, the caller's own
    unless they are an admin), its size and sha256, read through one descriptor."""
    if not os.path.isabs(path):
        raise InvalidRequest(f"filepath {path!r} must be an absolute path on the gateway host")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise InvalidRequest(f"cannot open {path} on the gateway host: {exc.strerror}",
                             hint="give a regular file the gateway can read "
                                  "(not a symbolic link)") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidRequest(f"{path} is not a regular file")
        if info.st_uid != caller.uid and not caller.is_admin(system):
            raise PermissionDenied(f"{path} belongs to uid {info.st_uid}, not to "
                                   f"{caller.label()}", hint="import a file you own")
        digest = hashlib.sha256()
        size = 0
        for chunk in _chunks(handle):
            digest.update(chunk)
            size += len(chunk)
        handle.seek(0)
        yield handle, size, digest.hexdigest()


def _chunks(handle: Any) -> Iterator[bytes]:
    while chunk := handle.read(IMPORT_CHUNK):
        yield chunk
