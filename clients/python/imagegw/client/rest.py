"""`RestGatewayClient`: the SDK calls shifterimg makes, over Shifter's REST API
(`/api/pull/...`, `/api/lookup/...`; the gateway's RestListen, or a Shifter gateway).

Same methods, models and errors as `GatewayClient`, so shifterimg prints the same
things and exits the same way over either API. Standard library only (urllib): a
fresh MUNGE credential in the `authentication` header of every request; pulls are
polled by re-sending them every 0.5 s, as Shifter's C client does.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

from imagegw.client.client import ready_image
from imagegw.client.errors import (
    GatewayError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from imagegw.client.models import ImageInfo, JobInfo, PullUpdate

__all__ = ["RestGatewayClient"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
DEFAULT_PULL_TIMEOUT = 3600.0
POLL_SECONDS = 0.5
#: Shifter's status words as our state names.
_STATES = {"MISSING": "", "INIT": "QUEUED", "PENDING": "QUEUED", "PULLING": "PULLING",
           "EXAMINATION": "PULLING", "CONVERSION": "CONVERTING", "TRANSFER": "TRANSFERRING",
           "READY": "READY", "FAILURE": "FAILED", "EXPIRED": "EXPIRED"}
_IN_FLIGHT = ("QUEUED", "PULLING", "CONVERTING", "TRANSFERRING", "")
_ERRORS: dict[int, tuple[type[GatewayError], str]] = {
    400: (InvalidArgument, "INVALID_ARGUMENT"), 401: (Unauthenticated, "UNAUTHENTICATED"),
    403: (PermissionDenied, "PERMISSION_DENIED"), 404: (NotFound, "NOT_FOUND"),
    429: (ResourceExhausted, "RESOURCE_EXHAUSTED"), 503: (Unavailable, "UNAVAILABLE"),
}


def _image(data: dict[str, Any], system: str) -> ImageInfo:
    state = _STATES.get(str(data.get("status", "")), "")
    tags = data.get("tag") or ()
    if isinstance(tags, str):
        tags = (tags,)
    last_pull = data.get("last_pull")
    name = str(data.get("id") or "")
    return ImageInfo(
        id=name, name=name, system=str(data.get("system") or system),
        type=str(data.get("itype") or "docker"),
        reference=str(tags[0]) if tags else "", tags=tuple(str(t) for t in tags), state=state,
        env=tuple(data.get("ENV") or ()), entrypoint=tuple(_items(data.get("ENTRY"))),
        workdir=str(data.get("WORKDIR") or ""), labels=dict(data.get("LABELS") or {}),
        user_acl=tuple(int(u) for u in data.get("userACL") or ()),
        group_acl=tuple(int(g) for g in data.get("groupACL") or ()),
        last_pull=(datetime.fromtimestamp(float(last_pull), UTC)
                   if isinstance(last_pull, int | float) and last_pull else None),
        failure_message=str(data.get("status_message") or "") if state == "FAILED" else "",
        failure_code="UNKNOWN" if state == "FAILED" else "",
    )


def _items(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(item) for item in value]
    return [value] if isinstance(value, str) and value else []


class RestGatewayClient:
    """A client for one site's REST gateways (base URLs like "http://gw:8000"), tried in
    turn when one cannot be reached. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        credential_provider: Callable[[], str | None] | None = None,
        pull_timeout: float = DEFAULT_PULL_TIMEOUT,
        ca_cert: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if isinstance(urls, str):
            urls = [urls]
        self._urls = [u.strip().rstrip("/") for u in urls if u.strip()]
        if not self._urls:
            raise ValueError("RestGatewayClient needs at least one gateway URL")
        self._timeout = timeout
        self._pull_timeout = pull_timeout
        self._credential_provider = credential_provider
        self._context = ssl.create_default_context(cafile=ca_cert) if ca_cert else None
        self._sleep = sleep
        self._preferred = 0

    # -- the API (the subset of GatewayClient that Shifter's REST API can carry) ----------

    def pull(self, system: str, reference: str, *, type: str = "docker", no_wait: bool = False,
             force: bool = False, user_acl: Iterable[int] = (), group_acl: Iterable[int] = ()
             ) -> Iterator[PullUpdate]:
        """POSTs the pull and yields the image each time, re-POSTing every 0.5 s while it
        is in flight (once with `no_wait`). `force` cannot travel over REST."""
        if force:
            raise InvalidArgument("--force cannot be sent over Shifter's REST API; use gRPC",
                                  code="INVALID_ARGUMENT")
        body: dict[str, str] = {}
        if users := ",".join(str(int(u)) for u in user_acl):
            body["allowed_uids"] = users
        if groups := ",".join(str(int(g)) for g in group_acl):
            body["allowed_gids"] = groups
        path = f"/api/pull/{_image_path(system, type, reference)}"
        return self._poll(system, path, json.dumps(body).encode() if body else b"", no_wait)

    def _poll(self, system: str, path: str, body: bytes, no_wait: bool) -> Iterator[PullUpdate]:
        deadline = time.monotonic() + self._pull_timeout
        while True:
            image = _image(self._request("POST", path, body), system)
            yield PullUpdate(image=image, message=image.failure_message)
            if no_wait or image.state not in _IN_FLIGHT:
                return
            if time.monotonic() > deadline:
                raise GatewayError(f"the pull was still {image.state} after "
                                   f"{self._pull_timeout:g}s", code="DEADLINE_EXCEEDED")
            self._sleep(POLL_SECONDS)

    def pull_and_wait(self, system: str, reference: str, *, type: str = "docker",
                      force: bool = False, user_acl: Iterable[int] = (),
                      group_acl: Iterable[int] = (),
                      on_update: Callable[[PullUpdate], None] | None = None) -> ImageInfo:
        last: PullUpdate | None = None
        for update in self.pull(system, reference, type=type, force=force, user_acl=user_acl,
                                group_acl=group_acl):
            if on_update is not None:
                on_update(update)
            last = update
        return ready_image(last)

    def lookup(self, system: str, reference: str, *, type: str = "docker") -> ImageInfo:
        return _image(self._request("GET", f"/api/lookup/{_image_path(system, type, reference)}"),
                      system)

    def lookup_id(self, system: str, image_id: str) -> ImageInfo:
        return self.lookup(system, image_id, type="id")

    def list_images(self, system: str, *, state: str | None = None) -> Iterator[ImageInfo]:
        for data in self._request("GET", f"/api/list/{quote(system, safe='')}/").get("list", []):
            image = _image(data, system)
            if state is None or image.state == state.upper():
                yield image

    def list_jobs(self, system: str | None = None) -> list[JobInfo]:
        if not system:
            raise InvalidArgument("Shifter's REST API lists the queue of one system: name it "
                                  "(--system), or use gRPC for --all", code="INVALID_ARGUMENT")
        entries = self._request("GET", f"/api/queue/{quote(system, safe='')}/").get("list", [])
        jobs = []
        for entry in entries:
            state = _STATES.get(str(entry.get("status", "")), "")
            jobs.append(JobInfo(id="-", system=system, reference=str(entry.get("image", "")),
                                state="FAILED" if state == "FAILED" else
                                "WAITING" if state == "QUEUED" else "RUNNING"))
        return jobs

    def expire_image(self, system: str, reference: str, *, type: str = "docker") -> ImageInfo:
        answer = self._request("GET", f"/api/expire/{_image_path(system, type, reference)}")
        return _image(answer.get("image") or {"id": (answer.get("expired") or [""])[0]}, system)

    def expire_unused(self, system: str) -> list[str]:
        answer = self._request("GET", f"/api/autoexpire/{quote(system, safe='')}/")
        return [str(name) for name in answer.get("status") or []]

    def import_image(self, system: str, tag: str, path: str | os.PathLike[str], *,
                     user_acl: Iterable[int] = (), group_acl: Iterable[int] = (),
                     chunk_size: int = 0) -> ImageInfo:
        """Shifter's doimport: the gateway reads the file at this path on its own host."""
        body: dict[str, str] = {"filepath": os.path.abspath(path), "format": "squashfs"}
        if users := ",".join(str(int(u)) for u in user_acl):
            body["allowed_uids"] = users
        if groups := ",".join(str(int(g)) for g in group_acl):
            body["allowed_gids"] = groups
        return _image(self._request("POST", f"/api/doimport/{_image_path(system, 'docker', tag)}",
                                    json.dumps(body).encode()), system)

    def login(self, system: str, registry: str, username: str, password: str) -> Any:
        raise InvalidArgument("login is not part of Shifter's REST API; log in over gRPC "
                              "(-g HOST:PORT of the gateway's gRPC port)",
                              code="INVALID_ARGUMENT")

    def logout(self, system: str, registry: str) -> bool:
        raise InvalidArgument("logout is not part of Shifter's REST API; use gRPC",
                              code="INVALID_ARGUMENT")

    def close(self) -> None:
        pass

    def __enter__(self) -> RestGatewayClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------

    def _request(self, method: str, path: str, body: bytes = b"") -> dict[str, Any]:
        """One request to each gateway in turn until one answers (not on HTTP errors)."""
        last_error: GatewayError | None = None
        count = len(self._urls)
        for step in range(count):
            index = (self._preferred + step) % count
            url = self._urls[index] + path
            try:
                answer = self._send(method, url, body)
            except Unavailable as error:
                logger.info("gateway %s unavailable; trying the next", self._urls[index])
                last_error = error
                continue
            self._preferred = index
            return answer
        assert last_error is not None
        raise last_error

    def _send(self, method: str, url: str, body: bytes) -> dict[str, Any]:
        headers = {}
        credential = self._credential_provider() if self._credential_provider else None
        if credential:
            headers["authentication"] = credential
        if method == "POST":
            headers["Content-type"] = "application/json"
        request = urllib.request.Request(url, data=body if method == "POST" else None,
                                         headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout,
                                        context=self._context) as response:
                return _json(response.read(), url)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc, url) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unavailable(f"gateway {url.split('/api/')[0]}: {reason}",
                              code="UNAVAILABLE") from exc


def _image_path(system: str, kind: str, reference: str) -> str:
    """"<system>/<type>/<tag>/" URL-escaped as Shifter's client escapes them."""
    return "/".join(quote(part, safe="") for part in (system, kind, reference)) + "/"


def _json(raw: bytes, url: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        raise GatewayError(f"{url} did not answer JSON; is it Shifter's REST API?") from None
    if not isinstance(data, dict):
        raise GatewayError(f"{url} answered JSON that is not an object")
    return data


def _http_error(exc: urllib.error.HTTPError, url: str) -> GatewayError:
    try:
        message = str(json.loads(exc.read()).get("message") or exc.reason)
    except (ValueError, AttributeError, OSError):
        message = f"HTTP {exc.code} {exc.reason} from {url}"
    cls, code = _ERRORS.get(exc.code, (GatewayError, "UNKNOWN"))
    return cls(message, code=code)
