"""Where an image's signatures are read from: lookaside storage and sigstore attachments.

Lookaside (registries.d `lookaside`): `<base>/<repository path>@sha256=<hex>/signature-N`
for N = 1, 2, ... until one is missing, from `file://` or `http(s)://`. Sigstore
attachments (`use-sigstore-attachments`): the OCI manifest tagged `sha256-<hex>.sig` in
the image's own repository, one payload layer per signature.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import urllib3

from imagegw.domain.errors import ImageNotFound, RegistryProtocolError, RegistryUnavailable

from .dockerref import DockerRef
from .gpg import MAX_SIGNATURE_BYTES
from .registries_d import SignatureStorage
from .sigstore import PAYLOAD_MEDIA_TYPE, SIGNATURE_ANNOTATION

log = logging.getLogger(__name__)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
#: containers/image reads at most this many signatures of one image.
MAX_SIGNATURES = 128
HTTP_TIMEOUT = urllib3.Timeout(connect=10.0, read=30.0)
#: Redirects are followed (as containers/image's HTTP client does); nothing is retried.
HTTP_RETRIES = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5)


class BlobSource(Protocol):
    """What we need of the registry client (imagegw.registry.client.RegistryClient)."""

    def get_manifest(self, ref: str) -> tuple[bytes, str, str]: ...
    def fetch_blob(self, digest: str, size: int, out: io.BytesIO, *,
                   max_bytes: int | None = None) -> None: ...


@dataclass(frozen=True)
class FoundSignature:
    """A signature as stored: a simple-signing blob, or a sigstore payload and signature."""

    kind: str  # "simple" or "sigstore"
    data: bytes
    where: str
    sigstore_signature: str | None = None


@dataclass
class Signatures:
    found: list[FoundSignature] = field(default_factory=list)
    #: Every place looked in, for "no signature found" messages.
    looked: list[str] = field(default_factory=list)


def collect(image: DockerRef, manifest_digest: str, storage: SignatureStorage,
            registry: BlobSource) -> Signatures:
    signatures = Signatures()
    base = storage.lookaside_for(image)
    if base:
        _lookaside(base, image, manifest_digest, signatures)
    if storage.sigstore_attachments_for(image):
        _attachments(image, manifest_digest, registry, signatures)
    return signatures


def lookaside_url(base: str, image: DockerRef, manifest_digest: str, number: int) -> str:
    algorithm, _, hexdigest = manifest_digest.partition(":")
    return f"{base}/{image.path}@{algorithm}={hexdigest}/signature-{number}"


def _lookaside(base: str, image: DockerRef, digest: str, signatures: Signatures) -> None:
    signatures.looked.append(lookaside_url(base, image, digest, 1))
    http = urllib3.PoolManager(timeout=HTTP_TIMEOUT, retries=HTTP_RETRIES) \
        if not base.startswith("file://") else None
    try:
        for number in range(1, MAX_SIGNATURES + 1):
            url = lookaside_url(base, image, digest, number)
            data = _read_file(url) if http is None else _read_http(http, url)
            if data is None:
                return
            signatures.found.append(FoundSignature("simple", data, url))
    finally:
        if http is not None:
            http.clear()


def _read_file(url: str) -> bytes | None:
    path = Path(unquote(urlsplit(url).path))
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SIGNATURE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryUnavailable(f"cannot read signature {url}: {exc.strerror}") from exc
    if len(data) > MAX_SIGNATURE_BYTES:
        raise RegistryProtocolError(f"signature {url} is larger than {MAX_SIGNATURE_BYTES} bytes")
    return data


def _read_http(http: urllib3.PoolManager, url: str) -> bytes | None:
    try:
        response = http.request("GET", url, preload_content=False)
    except urllib3.exceptions.HTTPError as exc:
        raise RegistryUnavailable(f"cannot read signature {url}: {exc}") from exc
    try:
        if response.status == 404:
            return None
        if response.status != 200:
            raise RegistryUnavailable(f"signature storage answered {response.status} for {url}")
        data = response.read(MAX_SIGNATURE_BYTES + 1)
    finally:
        response.release_conn()
    if len(data) > MAX_SIGNATURE_BYTES:
        raise RegistryProtocolError(f"signature {url} is larger than {MAX_SIGNATURE_BYTES} bytes")
    return data


def _attachments(image: DockerRef, digest: str, registry: BlobSource,
                 signatures: Signatures) -> None:
    tag = digest.replace(":", "-", 1) + ".sig"
    where = f"{image.name}:{tag}"
    signatures.looked.append(where)
    try:
        body, media_type, _ = registry.get_manifest(tag)
    except ImageNotFound:
        return
    if media_type != OCI_MANIFEST:
        raise RegistryProtocolError(f"{where}: a sigstore attachment is an OCI manifest, "
                                    f"not {media_type!r}")
    try:
        manifest = json.loads(body)
        layers = manifest["layers"]
        assert isinstance(layers, list)
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise RegistryProtocolError(f"{where}: not a valid OCI manifest") from exc
    for layer in layers[:MAX_SIGNATURES]:
        if not isinstance(layer, dict) or layer.get("mediaType") != PAYLOAD_MEDIA_TYPE:
            continue
        annotations = layer.get("annotations") or {}
        buffer = io.BytesIO()
        registry.fetch_blob(str(layer.get("digest", "")), int(layer.get("size", -1)), buffer,
                            max_bytes=MAX_SIGNATURE_BYTES)
        signatures.found.append(FoundSignature(
            "sigstore", buffer.getvalue(), f"{where} layer {layer.get('digest')}",
            sigstore_signature=annotations.get(SIGNATURE_ANNOTATION)))
