"""One HTTP exchange with a registry: timeouts, manual redirects, error translation.

`Transport.send` never retries and never reads the body; it follows up to five
redirects itself so that the Authorization header is dropped whenever a
redirect leaves the registry's scheme, host and port. `backoff_delay` and
`RETRYABLE_STATUS` are the retry policy the client applies on top.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import random
import ssl
import time
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import SSLError

from imagegw.domain.config import Limits
from imagegw.domain.errors import RegistryProtocolError, RegistryUnavailable

logger = logging.getLogger(__name__)

REDIRECT_STATUS = (301, 302, 303, 307, 308)
RETRYABLE_STATUS = (429, 500, 502, 503, 504)
MAX_REDIRECTS = 5
#: Longest we wait because a registry said Retry-After.
RETRY_AFTER_CAP = 60.0
BACKOFF_BASE = 0.5
BACKOFF_CAP = 20.0
_ERROR_BODY_CAP = 64 * 1024


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, with the scheme's default port filled in."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def backoff_delay(attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1`: exponential with jitter."""
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
    delay = delay / 2 + random.uniform(0, delay / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
    return delay


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def drain(response: urllib3.BaseHTTPResponse) -> None:
    """Discards an unwanted body so the connection can be reused."""
    with contextlib.suppress(Urllib3Error, OSError):
        response.drain_conn()
    response.release_conn()


def abandon(response: urllib3.BaseHTTPResponse) -> None:
    """Closes the connection of a body we stopped reading, without reading the rest
    (a large blob, or one that would not end)."""
    with contextlib.suppress(Urllib3Error, OSError):
        response.close()
    response.release_conn()


def error_detail(response: urllib3.BaseHTTPResponse) -> str:
    """The registry's own error message from a JSON error body, if any (reads the body)."""
    try:
        body = response.read(_ERROR_BODY_CAP, decode_content=True)
    except (Urllib3Error, OSError):
        body = b""
    finally:
        drain(response)
    try:
        errors = json.loads(body).get("errors") or []
        messages = (e.get("message") or e.get("code") for e in errors if isinstance(e, dict))
        return "; ".join(str(m) for m in messages)
    except (ValueError, AttributeError):
        return ""


class AddressCheck(Protocol):
    def address(self, host: str, port: int) -> str:
        """The checked address to connect to for host:port; raises when refused."""


def _guarded_pools(check: AddressCheck) -> dict[str, type[HTTPConnectionPool]]:
    """Pool classes whose connections resolve their host through `check` and connect to the
    address it returned (the name is not resolved a second time, so it cannot change
    between the check and the connection). TLS still verifies the certificate's name."""

    def new_conn(base: type[HTTPConnection], connection: HTTPConnection):  # noqa: ANN202
        host = connection._dns_host  # noqa: SLF001 - urllib3's resolvable host
        connection._dns_host = check.address(host, connection.port)  # noqa: SLF001
        try:
            return base._new_conn(connection)  # noqa: SLF001
        finally:
            connection._dns_host = host  # noqa: SLF001

    class CheckedConnection(HTTPConnection):
        def _new_conn(self):  # noqa: ANN202
            return new_conn(HTTPConnection, self)

    class CheckedTLSConnection(HTTPSConnection):
        def _new_conn(self):  # noqa: ANN202
            return new_conn(HTTPSConnection, self)

    class CheckedPool(HTTPConnectionPool):
        ConnectionCls = CheckedConnection

    class CheckedTLSPool(HTTPSConnectionPool):
        ConnectionCls = CheckedTLSConnection

    return {"http": CheckedPool, "https": CheckedTLSPool}


class Transport:
    """Sends single requests with explicit timeouts through one connection pool.

    With an `AddressCheck` (a registry no Location names: imagegw.registry.policy) every
    connection, redirects and token servers included, goes only where the check allows."""

    def __init__(self, limits: Limits, ca_bundle: str | None = None,
                 address_check: AddressCheck | None = None) -> None:
        self._timeout = urllib3.Timeout(connect=limits.http_timeout, read=limits.http_timeout)
        pool_args: dict[str, object] = {"retries": False, "timeout": self._timeout, "maxsize": 4}
        if ca_bundle:
            pool_args["ca_certs"] = ca_bundle
        self._pool = urllib3.PoolManager(**pool_args)  # type: ignore[arg-type]
        if address_check is not None:
            self._pool.pool_classes_by_scheme = _guarded_pools(address_check)

    def close(self) -> None:
        self._pool.clear()

    def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        *,
        authorization: str | None = None,
        auth_origin: tuple[str, str, int] | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """Sends one request, following redirects; the body is left unread.

        `authorization` goes only to URLs whose origin is `auth_origin` (by
        default the first URL's): a redirect elsewhere never carries it.
        """
        trusted = auth_origin or origin(url)
        first_host = _host(url)
        for hop in range(MAX_REDIRECTS + 1):
            request_headers = dict(headers)
            if authorization and origin(url) == trusted:
                request_headers["Authorization"] = authorization
            try:
                response = self._send_once(method, url, request_headers)
            except RegistryUnavailable as exc:
                if hop:  # say where the address came from: it is not in the configuration
                    exc.message += f" (the registry {first_host} redirected there)"
                raise
            if response.status not in REDIRECT_STATUS:
                return response
            location = response.headers.get("Location")
            drain(response)
            if not location:
                raise RegistryProtocolError(
                    f"{_host(url)} answered {response.status} without a Location header"
                )
            url = urljoin(url, location)
            if response.status == 303:
                method = "GET" if method != "HEAD" else "HEAD"
            logger.debug("following redirect to %s", _host(url))
        raise RegistryProtocolError(
            f"more than {MAX_REDIRECTS} redirects fetching from {_host(url)}")

    def _send_once(
        self, method: str, url: str, headers: dict[str, str]
    ) -> urllib3.BaseHTTPResponse:
        host = _host(url)
        try:
            return self._pool.request(
                method, url, headers=headers, redirect=False, retries=False,
                preload_content=False, timeout=self._timeout,
            )
        except SSLError as exc:
            error = RegistryUnavailable(
                f"TLS with {host} failed: {_reason(exc)}",
                hint="check the registry's certificate or configure its CA (sslcacert)",
            )
            error.retryable = False
            raise error from exc
        except (Urllib3Error, ssl.SSLError, OSError) as exc:
            raise RegistryUnavailable(
                f"cannot reach registry {host}: {_reason(exc)}",
                hint="check the network and the registry's address; the pull can be retried",
            ) from exc


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc) or type(exc).__name__
