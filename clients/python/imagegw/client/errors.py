"""The SDK's error tree and the one place gRPC errors are translated into it.

    GatewayError              .code (gRPC code name) and .message
    ├── InvalidArgument       a bad reference or request: change it
    ├── NotFound              unknown system or image
    ├── Unauthenticated       missing, expired or replayed credential
    ├── PermissionDenied      known caller, not allowed (or registry refused)
    ├── ResourceExhausted     a gateway limit was hit: try again later
    ├── Unavailable           no gateway answered: try again later
    └── PullFailed            the pull ran and failed; .message is the cause
"""

from __future__ import annotations

import grpc


class GatewayError(Exception):
    """Base of every error the SDK raises; `code` is a gRPC status code name."""

    def __init__(self, message: str, *, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


class InvalidArgument(GatewayError):
    """The request is malformed (for example, the reference does not parse)."""


class NotFound(GatewayError):
    """The system or the image does not exist."""


class Unauthenticated(GatewayError):
    """The gateway did not accept the caller's credential."""


class PermissionDenied(GatewayError):
    """The caller may not do this, or the registry refused the gateway."""


class ResourceExhausted(GatewayError):
    """A gateway limit was reached."""


class Unavailable(GatewayError):
    """No gateway could be reached, or the gateway's backend was down."""


class PullFailed(GatewayError):
    """The pull finished in state FAILED; `message` is the cause the gateway kept."""


_BY_CODE: dict[grpc.StatusCode, type[GatewayError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


def error_from_rpc(exc: grpc.RpcError, *, address: str = "") -> GatewayError:
    """Translates a failed gRPC call into the SDK's tree (the only place this happens)."""
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or ""
    name = code.name if code is not None else "UNKNOWN"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        where = f" at {address}" if address else ""
        details = f"the gateway{where} did not answer in time ({details or 'deadline exceeded'})"
    elif code == grpc.StatusCode.UNAVAILABLE and address:
        details = f"gateway {address}: {details or 'unavailable'}"
    cls = _BY_CODE.get(code, GatewayError) if code is not None else GatewayError
    return cls(details or name.lower().replace("_", " "), code=name)
