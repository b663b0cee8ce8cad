"""Registry authentication: WWW-Authenticate challenges, Basic and Bearer tokens.

`Authenticator` answers a registry's 401 once per challenge: Basic sends the
credentials, Bearer fetches a pull token from the realm (sending Basic
credentials there when we have them) and caches it for the client's life.
Passwords never appear in messages or logs.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import urllib3

from imagegw.domain.errors import RegistryAuthFailed, RegistryProtocolError, RegistryUnavailable
from imagegw.domain.model import RegistryCredentials

from .transport import RETRYABLE_STATUS, Transport, drain, error_detail, parse_retry_after

logger = logging.getLogger(__name__)

_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')
_TOKEN_REPLY_CAP = 1024 * 1024
LOGIN_HINT = "log in with 'shifterimg login' for this registry, or check the image name"


@dataclass(frozen=True)
class Challenge:
    """A parsed WWW-Authenticate header: scheme ("bearer"/"basic") and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenge(header: str | None) -> Challenge | None:
    """Parses `Bearer realm="...",service="..."` or `Basic realm="..."`; None if absent."""
    if not header or not header.strip():
        return None
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(rest):
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        params[match.group(1).lower()] = value
    return Challenge(scheme=scheme.lower(), params=params)


def basic_authorization(credentials: RegistryCredentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class Authenticator:
    """The Authorization header for one registry repository, renewed on a 401."""

    def __init__(
        self,
        transport: Transport,
        registry: str,
        repository: str,
        credentials: RegistryCredentials | None,
    ) -> None:
        self._transport = transport
        self._registry = registry
        self._repository = repository
        self._credentials = credentials
        self._header: str | None = None
        self._challenge: Challenge | None = None
        self._lock = threading.Lock()

    @property
    def header(self) -> str | None:
        return self._header

    @property
    def scope(self) -> str:
        return f"repository:{self._repository}:pull"

    def answer(self, www_authenticate: str | None, sent: str | None) -> None:
        """Handles a 401 to a request that carried `sent`: renews the header or raises.

        Threads share a client: when another thread already renewed the header
        since `sent`, the caller just retries with the new one.
        """
        with self._lock:
            if self._header != sent:
                return
            self._renew(www_authenticate)

    def _renew(self, www_authenticate: str | None) -> None:
        challenge = parse_challenge(www_authenticate) or self._challenge
        if challenge is None:
            raise RegistryProtocolError(
                f"registry {self._registry} answered 401 without a WWW-Authenticate challenge"
            )
        if challenge.scheme == "basic":
            self._answer_basic()
        elif challenge.scheme == "bearer":
            self._challenge = challenge
            self._header = "Bearer " + self.fetch_token(challenge)
        else:
            raise RegistryProtocolError(
                f"registry {self._registry} asks for unsupported authentication "
                f"{challenge.scheme!r}"
            )

    def refused(self) -> RegistryAuthFailed:
        """The error for a registry that still says 401/403 with our credentials."""
        if self._credentials is None:
            return RegistryAuthFailed(
                f"registry {self._registry} refused anonymous access to {self._repository}",
                hint=LOGIN_HINT,
            )
        return RegistryAuthFailed(
            f"registry {self._registry} refused user {self._credentials.username!r} "
            f"access to {self._repository}",
            hint="check the user name and password, and that the user may pull this repository",
        )

    def _answer_basic(self) -> None:
        if self._credentials is None:
            raise RegistryAuthFailed(
                f"registry {self._registry} requires a login to pull {self._repository}",
                hint=LOGIN_HINT,
            )
        sent = basic_authorization(self._credentials)
        if self._header == sent:
            raise self.refused()
        self._header = sent

    def fetch_token(self, challenge: Challenge) -> str:
        """Asks the challenge's realm for a pull token for our repository."""
        realm = challenge.params.get("realm", "")
        if urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryProtocolError(
                f"registry {self._registry} sent a Bearer challenge without a usable realm"
            )
        query = {"scope": self.scope}
        if "service" in challenge.params:
            query["service"] = challenge.params["service"]
        url = f"{realm}{'&' if '?' in realm else '?'}{urlencode(query)}"
        authorization = basic_authorization(self._credentials) if self._credentials else None
        logger.debug("requesting a pull token for %s from %s", self._repository,
                     urlsplit(realm).netloc)
        response = self._transport.send("GET", url, {"Accept": "application/json"},
                                        authorization=authorization)
        if response.status in (401, 403):
            detail = error_detail(response)
            error = self.refused()
            if detail:
                error.message += f": {detail}"
            raise error
        if response.status in RETRYABLE_STATUS:
            drain(response)
            raise RegistryUnavailable(
                f"token service for {self._registry} answered {response.status}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if response.status != 200:
            detail = error_detail(response)
            raise RegistryProtocolError(
                f"token service for {self._registry} answered {response.status} {detail}".rstrip()
            )
        return self._read_token(response)

    def _read_token(self, response: urllib3.BaseHTTPResponse) -> str:
        try:
            body = response.read(_TOKEN_REPLY_CAP + 1)
        finally:
            drain(response)
        if len(body) > _TOKEN_REPLY_CAP:
            raise RegistryProtocolError(
                f"token service for {self._registry} sent an oversized reply")
        try:
            reply = json.loads(body)
        except ValueError as exc:
            raise RegistryProtocolError(
                f"token service for {self._registry} did not answer JSON"
            ) from exc
        token = None
        if isinstance(reply, dict):
            token = reply.get("token") or reply.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryProtocolError(f"token service for {self._registry} sent no token")
        return token
