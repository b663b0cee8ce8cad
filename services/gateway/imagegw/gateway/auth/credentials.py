"""Turns a request's metadata into an Identity for one system.

Reads the `authentication` entry (a MUNGE credential), decodes it with the munged of the
system named in the request and trusts the uid/gid only when decoding succeeded.
Works on plain (key, value) tuples; the gRPC edge hands them over.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping, Sequence

from imagegw.domain.config import Platform
from imagegw.domain.errors import Unauthenticated
from imagegw.gateway.auth.identity import ANONYMOUS, Identity
from imagegw.gateway.auth.munge import MungeDecoder

log = logging.getLogger(__name__)

__all__ = ["METADATA_KEY", "authenticate", "authenticate_with_payload"]

METADATA_KEY = "authentication"


def authenticate(
    metadata: Sequence[tuple[str, str | bytes]],
    platform: Platform,
    decoders: MutableMapping[str, MungeDecoder],
) -> Identity:
    """The caller's identity on `platform`; ANONYMOUS when no credential was sent.

    `decoders` caches one MungeDecoder per socket path and is filled as systems are used.
    """
    return authenticate_with_payload(metadata, platform, decoders)[0]


def authenticate_with_payload(
    metadata: Sequence[tuple[str, str | bytes]],
    platform: Platform,
    decoders: MutableMapping[str, MungeDecoder],
) -> tuple[Identity, bytes]:
    """Like `authenticate`, also returning the payload sealed in the credential
    (b"" for none, or for an anonymous call)."""
    credential = _credential(metadata)
    if credential is None:
        return ANONYMOUS, b""
    if not platform.munge_socket:
        # Nothing can check it, so it grants nothing: the caller is anonymous (clients on
        # hosts that run munged send credentials to every gateway, the embedded one too).
        log.debug("system %s has no mungeSocketPath: credential ignored", platform.name)
        return ANONYMOUS, b""
    decoder = decoders.get(platform.munge_socket)
    if decoder is None:
        decoder = decoders.setdefault(platform.munge_socket, MungeDecoder(platform.munge_socket))
    verified = decoder.decode(credential)
    return Identity.from_uid(verified.uid, verified.gid), verified.payload


def _credential(metadata: Sequence[tuple[str, str | bytes]]) -> str | bytes | None:
    """The one `authentication` value, or None when absent."""
    values = [value for key, value in metadata if key.lower() == METADATA_KEY]
    if not values:
        return None
    if len(values) > 1:
        raise Unauthenticated(
            f"the request carries {len(values)} '{METADATA_KEY}' entries; send exactly one"
        )
    return values[0]
