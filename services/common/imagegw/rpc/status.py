"""The one table between our error tree and gRPC status codes."""

from __future__ import annotations

import grpc

from imagegw.domain import errors

# Most specific first: the first class in an error's MRO that is listed wins.
ERROR_STATUS: dict[type[errors.ImageGatewayError], grpc.StatusCode] = {
    errors.InvalidReference: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.UnknownSystem: grpc.StatusCode.NOT_FOUND,
    errors.PlatformNotFound: grpc.StatusCode.NOT_FOUND,
    errors.ImageNotFound: grpc.StatusCode.NOT_FOUND,
    errors.RegistryAuthFailed: grpc.StatusCode.PERMISSION_DENIED,
    errors.RegistryUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.RegistryProtocolError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.DigestMismatch: grpc.StatusCode.DATA_LOSS,
    errors.ContentRejected: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ConversionFailed: grpc.StatusCode.INTERNAL,
    errors.TransferFailed: grpc.StatusCode.UNAVAILABLE,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.AuthServiceUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.WorkerUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.BackendUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
}


def status_for(error: BaseException) -> grpc.StatusCode:
    """The gRPC status for an error; UNKNOWN for anything outside our tree."""
    for cls in type(error).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return grpc.StatusCode.UNKNOWN


def status_for_kind(kind: str) -> grpc.StatusCode:
    """The gRPC status for an error kind (`imagegw.domain.errors.kind_of`); INTERNAL for
    INTERNAL_KIND, UNKNOWN for a kind this version does not know."""
    if kind == errors.INTERNAL_KIND:
        return grpc.StatusCode.INTERNAL
    cls = errors.error_class(kind)
    return grpc.StatusCode.UNKNOWN if cls is None else status_for(cls(""))


#: A failure from a worker or record older than error kinds carries only a status number.
_KIND_FOR_STATUS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.INTERNAL: errors.INTERNAL_KIND,
    **{code: cls.__name__ for cls, code in reversed(ERROR_STATUS.items())},
}


def kind_for_status(code: grpc.StatusCode) -> str:
    """The first error kind the table lists with this status (for peers and records from
    before error kinds)."""
    return _KIND_FOR_STATUS.get(code, errors.INTERNAL_KIND)
