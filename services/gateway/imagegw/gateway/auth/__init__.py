"""Authentication of gateway callers with MUNGE credentials.

`authenticate(metadata, platform, decoders)` is the entry point for the gRPC edge;
`MungeDecoder` and `encode` wrap libmunge; `Identity` and `is_admin` describe the caller.
"""

from imagegw.gateway.auth.credentials import (
    METADATA_KEY,
    authenticate,
    authenticate_with_payload,
)
from imagegw.gateway.auth.identity import ANONYMOUS, Identity, is_admin
from imagegw.gateway.auth.munge import (
    AuthServiceUnavailable,
    MungeDecoder,
    MungeIdentity,
    encode,
)

__all__ = [
    "ANONYMOUS",
    "METADATA_KEY",
    "AuthServiceUnavailable",
    "Identity",
    "MungeDecoder",
    "MungeIdentity",
    "authenticate",
    "authenticate_with_payload",
    "encode",
    "is_admin",
]
