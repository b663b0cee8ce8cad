"""The one error tree of the Image Gateway.

Errors are named for what the caller does next. The gRPC status each maps to
lives in one table, `imagegw.rpc.status`; the core never imports grpc.

    ImageGatewayError
    ├── InvalidRequest            bad input: fix the request
    │   └── InvalidReference      the image reference does not parse
    ├── UnknownSystem             the system is not in the configuration
    ├── ImageNotFound             no such image (registry or records)
    │   └── PlatformNotFound      a multi-platform image without our os/arch
    ├── RegistryAuthFailed        the registry refused our credentials
    ├── RegistryUnavailable       network trouble, 429, 5xx: retryable
    ├── RegistryProtocolError     the registry answered nonsense
    ├── ContentRejected           hostile or corrupt content; nothing published
    │   └── DigestMismatch        a blob's bytes do not match its digest
    ├── ConversionFailed          the image builder failed
    ├── TransferFailed            publishing to the image directory failed
    ├── Unauthenticated           the caller's credentials are missing/bad
    ├── AuthServiceUnavailable    MUNGE cannot check credentials now: retryable
    ├── PermissionDenied          the caller may not do this
    ├── ResourceExhausted         a limit was hit (concurrent pulls, sizes)
    ├── WorkerUnavailable         no worker could take the job: retryable
    ├── BackendUnavailable        records (SQLite/MongoDB) or queue (Redis) down: retryable
    ├── ConfigError               the configuration is invalid (start-up)
    └── Cancelled                 the job was cancelled or shut down
"""

from __future__ import annotations


class ImageGatewayError(Exception):
    """Base of every error the gateway and worker raise on purpose."""

    #: Whether trying the same operation again later may succeed.
    retryable: bool = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class InvalidRequest(ImageGatewayError):
    """The request is malformed; the caller must change it."""


class InvalidReference(InvalidRequest):
    """An image reference that does not parse."""


class UnknownSystem(ImageGatewayError):
    """The system (platform) is not configured."""


class ImageNotFound(ImageGatewayError):
    """The image does not exist in the registry or in the records."""


class PlatformNotFound(ImageNotFound):
    """A multi-platform image has no manifest for the wanted platform."""


class RegistryAuthFailed(ImageGatewayError):
    """The registry refused the credentials (or anonymous access)."""


class RegistryUnavailable(ImageGatewayError):
    """The registry could not be reached or answered 429/5xx."""

    retryable = True

    def __init__(
        self, message: str, *, hint: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class RegistryProtocolError(ImageGatewayError):
    """The registry answered something that breaks the distribution spec."""


class ContentRejected(ImageGatewayError):
    """Image content that is hostile, corrupt or over a limit."""


class DigestMismatch(ContentRejected):
    """A blob's size or sha256 does not match what the manifest says."""


class ConversionFailed(ImageGatewayError):
    """Building the image file failed."""


class TransferFailed(ImageGatewayError):
    """Publishing the image to the system's image directory failed."""


class Unauthenticated(ImageGatewayError):
    """The caller's credentials are missing, expired, replayed or invalid."""


class AuthServiceUnavailable(ImageGatewayError):
    """The MUNGE daemon (or libmunge) that checks credentials cannot be used right now."""

    retryable = True


class PermissionDenied(ImageGatewayError):
    """The caller is known but may not do this."""


class ResourceExhausted(ImageGatewayError):
    """A configured limit was reached."""

    retryable = True


class WorkerUnavailable(ImageGatewayError):
    """No worker could run the job right now."""

    retryable = True


class BackendUnavailable(ImageGatewayError):
    """The record store or the job queue cannot be reached; the gateway retries."""

    retryable = True


class ConfigError(ImageGatewayError):
    """The configuration is invalid; the message names the key."""


class Cancelled(ImageGatewayError):
    """The job was cancelled (shutdown, client gone)."""


#: The kind of an error that is not in the tree (a bug): its cause still reaches the user.
INTERNAL_KIND = "InternalError"


def _tree() -> dict[str, type[ImageGatewayError]]:
    kinds: dict[str, type[ImageGatewayError]] = {}
    pending: list[type[ImageGatewayError]] = [ImageGatewayError]
    while pending:
        cls = pending.pop()
        kinds[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return kinds


def kind_of(error: BaseException) -> str:
    """The name of the most specific class of the tree that `error` is (subclasses
    defined outside this module count as their nearest listed ancestor), or
    INTERNAL_KIND. A kind crosses process boundaries (worker to gateway, records)."""
    listed = _tree()
    for cls in type(error).__mro__:
        if listed.get(cls.__name__) is cls and cls.__module__ == __name__:
            return cls.__name__
    return INTERNAL_KIND


def error_class(kind: str) -> type[ImageGatewayError] | None:
    """The class of the tree a kind names; None for INTERNAL_KIND or an unknown kind."""
    cls = _tree().get(kind)
    return cls if cls is not None and cls.__module__ == __name__ else None
