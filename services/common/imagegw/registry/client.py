"""A client for one repository of a Docker Registry v2 / OCI distribution registry.

`RegistryClient` fetches manifests and blobs with authentication, manual
redirects, retries with backoff for retryable failures only, resumable blob
downloads, and verification of every size and sha256 while streaming.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import BinaryIO, TypeVar
from urllib.parse import quote

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from imagegw.domain.config import Limits
from imagegw.domain.errors import (
    ContentRejected,
    ConversionFailed,
    DigestMismatch,
    ImageNotFound,
    RegistryProtocolError,
    RegistryUnavailable,
)
from imagegw.domain.model import RegistryCredentials

from .auth import Authenticator
from .manifest import (
    ACCEPTED_MANIFEST_TYPES,
    DEFAULT_LIMITS,
    check_digest_syntax,
    sha256_digest,
)
from .transport import (
    RETRYABLE_STATUS,
    AddressCheck,
    Transport,
    abandon,
    backoff_delay,
    drain,
    error_detail,
    origin,
    parse_retry_after,
)

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
_ACCEPT = ", ".join(ACCEPTED_MANIFEST_TYPES)
T = TypeVar("T")


class RegistryClient:
    """Pulls manifests and blobs of `repository` from the registry at `base_url`."""

    def __init__(
        self,
        base_url: str,
        repository: str,
        *,
        credentials: RegistryCredentials | None = None,
        limits: Limits = DEFAULT_LIMITS,
        ca_bundle: str | None = None,
        address_check: AddressCheck | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.repository = repository
        self.limits = limits
        self.host = self.base_url.split("://", 1)[-1]
        self._origin = origin(self.base_url)
        self._transport = Transport(limits, ca_bundle, address_check)
        self._auth = Authenticator(self._transport, self.host, repository, credentials)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- public operations -------------------------------------------------

    def check_access(self) -> None:
        """Raises unless the registry answers /v2/ with our credentials.

        A token registry's challenge is answered with a pull token for our
        repository, so wrong credentials fail here as they would in a pull.
        """
        response = self._retrying(lambda: self._exchange("GET", "/v2/", {}))
        self._expect_ok(response, "the registry API /v2/")
        drain(response)

    def get_manifest(self, ref: str) -> tuple[bytes, str, str]:
        """(body, media type, sha256 digest) of the manifest or index at tag or digest `ref`."""
        if ref.startswith("sha256:") or ":" in ref:
            check_digest_syntax(ref)
        body, media_type = self._retrying(lambda: self._read_manifest(ref))
        digest = sha256_digest(body)
        if ":" in ref and digest != ref:
            raise DigestMismatch(
                f"manifest {self.repository}@{ref} from {self.host} hashes to {digest}"
            )
        return body, media_type, digest

    def head_manifest(self, ref: str) -> str:
        """The digest of the manifest at `ref`, from Docker-Content-Digest or by GET."""
        headers = {"Accept": _ACCEPT}
        response = self._retrying(lambda: self._exchange("HEAD", self._manifest_path(ref), headers))
        self._expect_ok(response, f"image {self.repository}:{ref}", not_found=ImageNotFound)
        digest = response.headers.get("Docker-Content-Digest", "")
        drain(response)
        if digest.startswith("sha256:"):
            check_digest_syntax(digest)
            return digest
        return self.get_manifest(ref)[2]

    def fetch_blob(
        self,
        digest: str,
        size: int,
        out: BinaryIO,
        *,
        on_bytes: Callable[[int], None] | None = None,
        max_bytes: int | None = None,
    ) -> None:
        """Streams blob `digest` of `size` bytes into `out`, verifying size and sha256.

        A download cut off mid-way resumes with a Range request when the registry
        supports ranges; otherwise it restarts (rewinding `out`, which must then be
        seekable). `on_bytes` is called with the size of every chunk written, and
        with minus the bytes thrown away when a download restarts.
        """
        check_digest_syntax(digest)
        if max_bytes is not None and size > max_bytes:
            raise ContentRejected(
                f"blob {digest} is {size} bytes, more than the limit of {max_bytes}")
        download = _Download(digest, size, out, on_bytes)
        path = f"/v2/{self.repository}/blobs/{digest}"
        attempts = max(1, self.limits.http_retries)
        for attempt in range(attempts):
            try:
                self._download_once(path, download)
                break
            except RegistryUnavailable as exc:
                if not exc.retryable or attempt + 1 >= attempts:
                    raise
                delay = backoff_delay(attempt, exc.retry_after)
                logger.info("blob %s from %s: %s; retrying in %.1fs", digest, self.host, exc, delay)
                time.sleep(delay)
        download.verify()

    # -- internals ---------------------------------------------------------

    def _manifest_path(self, ref: str) -> str:
        return f"/v2/{self.repository}/manifests/{quote(ref, safe=':')}"

    def _read_manifest(self, ref: str) -> tuple[bytes, str]:
        response = self._exchange("GET", self._manifest_path(ref), {"Accept": _ACCEPT})
        self._expect_ok(response, f"image {self.repository}:{ref}", not_found=ImageNotFound)
        cap = self.limits.max_manifest_bytes
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > cap:
            drain(response)
            raise ContentRejected(f"manifest of {self.repository}:{ref} is over {cap} bytes")
        try:
            body = response.read(cap + 1)
        except (Urllib3Error, OSError) as exc:
            raise RegistryUnavailable(f"reading a manifest from {self.host} failed: {exc}") from exc
        finally:
            drain(response)
        if len(body) > cap:
            raise ContentRejected(f"manifest of {self.repository}:{ref} is over {cap} bytes")
        media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
        return body, media_type

    def _download_once(self, path: str, download: _Download) -> None:
        headers = {}
        if download.written and download.ranges_supported:
            headers["Range"] = f"bytes={download.written}-"
        response = self._exchange("GET", path, headers)
        self._expect_ok(response, f"blob {download.digest} of {self.repository}",
                        not_found=ImageNotFound)
        read_to_the_end = False
        try:
            download.begin(response)
            for chunk in response.stream(CHUNK_SIZE, decode_content=False):
                download.write(chunk)
            read_to_the_end = True
        except (Urllib3Error, OSError) as exc:
            raise RegistryUnavailable(
                f"download of blob {download.digest} from {self.host} broke off "
                f"after {download.written} bytes: {exc}"
            ) from exc
        finally:
            # A download given up (too long, stopped by the caller) is not read to its end.
            (drain if read_to_the_end else abandon)(response)

    def _retrying(self, operation: Callable[[], T]) -> T:
        attempts = max(1, self.limits.http_retries)
        for attempt in range(attempts):
            try:
                return operation()
            except RegistryUnavailable as exc:
                if not exc.retryable or attempt + 1 >= attempts:
                    raise
                delay = backoff_delay(attempt, exc.retry_after)
                logger.info("%s; retrying in %.1fs", exc, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _exchange(
        self, method: str, path: str, headers: dict[str, str]
    ) -> urllib3.BaseHTTPResponse:
        """One authenticated request; raises RegistryUnavailable for 429/5xx."""
        url = self.base_url + path
        sent = self._auth.header
        response = self._send(method, url, headers, sent)
        if response.status == 401:
            challenge = response.headers.get("WWW-Authenticate")
            drain(response)
            self._auth.answer(challenge, sent)
            response = self._send(method, url, headers, self._auth.header)
            if response.status == 401:
                drain(response)
                raise self._auth.refused()
        if response.status in RETRYABLE_STATUS:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            detail = error_detail(response)
            raise RegistryUnavailable(
                f"registry {self.host} answered {response.status} {detail}".rstrip(),
                hint="the registry is busy or failing; try again later",
                retry_after=retry_after,
            )
        return response

    def _send(
        self, method: str, url: str, headers: dict[str, str], authorization: str | None
    ) -> urllib3.BaseHTTPResponse:
        return self._transport.send(method, url, headers, authorization=authorization,
                                    auth_origin=self._origin)

    def _expect_ok(
        self,
        response: urllib3.BaseHTTPResponse,
        what: str,
        *,
        not_found: type[ImageNotFound] | None = None,
    ) -> None:
        """Raises the right error for a non-2xx answer (reading and closing its body)."""
        if 200 <= response.status < 300:
            return
        status = response.status
        detail = error_detail(response)
        if status == 404 and not_found is not None:
            raise not_found(f"registry {self.host} has no {what}",
                            hint="check the image name and tag")
        if status in (401, 403):
            error = self._auth.refused()
            if detail:
                error.message += f": {detail}"
            raise error
        raise RegistryProtocolError(
            f"registry {self.host} answered {status} for {what}" + (f": {detail}" if detail else "")
        )


class _Download:
    """The state of one blob download across attempts: bytes written and their hash."""

    def __init__(
        self, digest: str, size: int, out: BinaryIO, on_bytes: Callable[[int], None] | None
    ) -> None:
        self.digest = digest
        self.size = size
        self.out = out
        self.on_bytes = on_bytes
        self.written = 0
        self.ranges_supported = False
        self._hash = hashlib.sha256()
        self._start = out.tell() if out.seekable() else None

    def begin(self, response: urllib3.BaseHTTPResponse) -> None:
        """Checks the answer fits where we are: a resumed 206 or a (re)started 200."""
        if response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if start != self.written:
                raise RegistryProtocolError(
                    f"asked for blob {self.digest} from byte {self.written}, got byte {start}"
                )
            self.ranges_supported = True
            return
        if self.written:
            self._rewind()
        self.ranges_supported = response.headers.get("Accept-Ranges", "").lower() == "bytes"
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.size:
            raise DigestMismatch(
                f"layer larger than its manifest says: blob {self.digest} is {length} bytes, "
                f"the manifest says {self.size}"
            )

    def write(self, chunk: bytes) -> None:
        if self.written + len(chunk) > self.size:
            raise DigestMismatch(
                f"layer larger than its manifest says: blob {self.digest} sent more than "
                f"the {self.size} bytes the manifest says"
            )
        try:
            self.out.write(chunk)
        except OSError as exc:
            # Our own disk failed, not the registry: retrying the download cannot help.
            raise _local_write_failed(self.digest, self.out, exc) from exc
        self._hash.update(chunk)
        self.written += len(chunk)
        if self.on_bytes is not None:
            self.on_bytes(len(chunk))

    def verify(self) -> None:
        if self.written != self.size:
            raise DigestMismatch(
                f"blob {self.digest} ended after {self.written} bytes; "
                f"the manifest says {self.size}"
            )
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self.digest:
            raise DigestMismatch(f"blob {self.digest} hashes to {actual}: corrupt download")

    def _rewind(self) -> None:
        if self._start is None:
            error = RegistryUnavailable(
                f"download of blob {self.digest} must restart but its output cannot be rewound"
            )
            error.retryable = False
            raise error
        self.out.seek(self._start)
        self.out.truncate()
        self._hash = hashlib.sha256()
        if self.on_bytes is not None:
            self.on_bytes(-self.written)
        self.written = 0


def _content_range_start(value: str) -> int:
    """The first byte of `Content-Range: bytes N-M/T`, or -1."""
    unit, _, spec = value.strip().partition(" ")
    first = spec.split("-", 1)[0]
    return int(first) if unit == "bytes" and first.isdigit() else -1


def _local_write_failed(digest: str, out: BinaryIO, exc: OSError) -> ConversionFailed:
    """The error for a blob that cannot be stored: it names the directory written to."""
    where = _directory_of(out)
    hint = None
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = f"free space on the file system holding {where}"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"the worker needs write access to {where}"
    return ConversionFailed(
        f"storing blob {digest} in {where} failed: {exc.strerror or exc}", hint=hint)


def _directory_of(out: BinaryIO) -> str:
    """The directory of the file behind `out`, or a description when it has none."""
    name = getattr(out, "name", None)
    try:
        path = name if isinstance(name, str) else os.readlink(f"/proc/self/fd/{out.fileno()}")
    except (AttributeError, OSError, ValueError):
        return "the worker's local storage"
    return os.path.dirname(path) or "."
