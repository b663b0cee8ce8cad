"""The caller of a request, as every edge (gRPC, REST) makes it: the MUNGE credential in
its metadata decoded by the system's munged, charged to the fair share by the verified
uid (by peer address without one), and the admin rights that system gives it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from imagegw.domain.config import Platform
from imagegw.gateway.auth import MungeDecoder, authenticate_with_payload, is_admin
from imagegw.gateway.core.access import ANONYMOUS_CALLER, Caller
from imagegw.gateway.core.fairshare import Admission

__all__ = ["authenticate_caller"]


def authenticate_caller(metadata: Sequence[tuple[str, Any]], system: str, platform: Platform,
                        decoders: dict[str, MungeDecoder], admission: Admission | None = None
                        ) -> tuple[Caller, bytes]:
    """The caller and the payload sealed in its credential (b"" for none)."""
    identity, payload = authenticate_with_payload(metadata, platform, decoders)
    if admission is not None:
        admission.charge(None if identity.is_anonymous else identity.uid)
    if identity.is_anonymous:
        return ANONYMOUS_CALLER, b""
    admin_of = frozenset({system}) if is_admin(identity, platform) else frozenset()
    return Caller(uid=identity.uid, gid=identity.gid, user=identity.user,
                  groups=identity.groups, admin_of=admin_of), payload
