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


def code_number(error: BaseException) -> int:
    return int(status_for(error).value[0])
