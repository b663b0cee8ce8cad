"""MUNGE credentials through libmunge (ctypes): decode for the gateway, encode for clients.

Owns the binding to `libmunge.so.2` and the translation of MUNGE error numbers into our
error tree. A failed decode never yields (or logs) the uid/gid libmunge may have filled in.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass

from imagegw.domain.errors import AuthServiceUnavailable, ImageGatewayError, Unauthenticated

__all__ = ["AuthServiceUnavailable", "MungeDecoder", "MungeIdentity", "encode"]

log = logging.getLogger(__name__)

LIBRARY = "libmunge.so.2"

# From munge.h (munge 0.5.x): enum munge_opt and enum munge_err.
MUNGE_OPT_TTL = 4
MUNGE_OPT_SOCKET = 8

EMUNGE_SUCCESS = 0
EMUNGE_SNAFU = 1
EMUNGE_BAD_ARG = 2
EMUNGE_BAD_LENGTH = 3
EMUNGE_OVERFLOW = 4
EMUNGE_NO_MEMORY = 5
EMUNGE_SOCKET = 6
EMUNGE_TIMEOUT = 7
EMUNGE_BAD_CRED = 8
EMUNGE_BAD_VERSION = 9
EMUNGE_BAD_CIPHER = 10
EMUNGE_BAD_MAC = 11
EMUNGE_BAD_ZIP = 12
EMUNGE_BAD_REALM = 13
EMUNGE_CRED_INVALID = 14
EMUNGE_CRED_EXPIRED = 15
EMUNGE_CRED_REWOUND = 16
EMUNGE_CRED_REPLAYED = 17
EMUNGE_CRED_UNAUTHORIZED = 18

#: Longer than any credential a client sends; stops us shipping junk to munged.
MAX_CREDENTIAL_BYTES = 1 << 20

_SERVICE_ERRORS = {EMUNGE_SNAFU, EMUNGE_NO_MEMORY, EMUNGE_SOCKET, EMUNGE_TIMEOUT}
_MALFORMED = {
    EMUNGE_BAD_ARG, EMUNGE_BAD_LENGTH, EMUNGE_OVERFLOW, EMUNGE_BAD_CRED,
    EMUNGE_BAD_VERSION, EMUNGE_BAD_CIPHER, EMUNGE_BAD_MAC, EMUNGE_BAD_ZIP,
}
_FRESH = "create a fresh credential (munge -n) and try again"
_CLOCKS = "check that the clocks of the client host and the gateway agree"


@dataclass(frozen=True)
class MungeIdentity:
    """Who made a credential that decoded successfully, and what it carried."""

    uid: int
    gid: int
    payload: bytes


class _LibMunge:
    """The few libmunge functions we call, with their C signatures."""

    def __init__(self, lib: ctypes.CDLL, libc: ctypes.CDLL) -> None:
        self.ctx_create = lib.munge_ctx_create
        self.ctx_create.argtypes = []
        self.ctx_create.restype = ctypes.c_void_p
        self.ctx_destroy = lib.munge_ctx_destroy
        self.ctx_destroy.argtypes = [ctypes.c_void_p]
        self.ctx_destroy.restype = None
        self.ctx_strerror = lib.munge_ctx_strerror
        self.ctx_strerror.argtypes = [ctypes.c_void_p]
        self.ctx_strerror.restype = ctypes.c_char_p
        # munge_ctx_set is variadic; one prototype per value type we pass.
        set_str = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)
        set_int = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int)
        self.ctx_set_str = set_str(("munge_ctx_set", lib))
        self.ctx_set_int = set_int(("munge_ctx_set", lib))
        self.decode = lib.munge_decode
        self.decode.argtypes = [
            ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_uint),
            ctypes.POINTER(ctypes.c_uint),
        ]
        self.decode.restype = ctypes.c_int
        self.encode = lib.munge_encode
        self.encode.argtypes = [
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
        ]
        self.encode.restype = ctypes.c_int
        self.strerror = lib.munge_strerror
        self.strerror.argtypes = [ctypes.c_int]
        self.strerror.restype = ctypes.c_char_p
        self.free = libc.free
        self.free.argtypes = [ctypes.c_void_p]
        self.free.restype = None

    def error_text(self, code: int, ctx: int | None) -> str:
        """The most detailed message libmunge has for an error (context first)."""
        text = self.ctx_strerror(ctx) if ctx else None
        if not text:
            text = self.strerror(code)
        return (text or b"unknown MUNGE error").decode("utf-8", "replace")


@functools.cache
def _library() -> _LibMunge:
    """libmunge, loaded once (a failed load is retried next call: cache skips exceptions)."""
    try:
        return _LibMunge(ctypes.CDLL(LIBRARY), ctypes.CDLL("libc.so.6"))
    except OSError as exc:
        raise AuthServiceUnavailable(
            f"cannot load {LIBRARY}: {exc}",
            hint="install the MUNGE client library (Debian: libmunge2) on the gateway host",
        ) from exc


class _Context:
    """One libmunge context bound to a socket; created and destroyed per call."""

    def __init__(self, lib: _LibMunge, socket_path: str) -> None:
        self.lib = lib
        self.socket_path = socket_path
        self.handle: int | None = None

    def __enter__(self) -> int:
        handle = self.lib.ctx_create()
        if not handle:
            raise AuthServiceUnavailable("libmunge could not create a context (out of memory)")
        self.handle = handle
        code = self.lib.ctx_set_str(handle, MUNGE_OPT_SOCKET, self.socket_path.encode())
        if code != EMUNGE_SUCCESS:
            detail = self.lib.error_text(code, handle)
            self.__exit__()
            raise _service_error(self.socket_path, detail)
        return handle

    def __exit__(self, *exc_info: object) -> None:
        if self.handle:
            self.lib.ctx_destroy(self.handle)
            self.handle = None


class MungeDecoder:
    """Decodes credentials with the MUNGE daemon listening on `socket_path`.

    Thread-safe: every call uses its own libmunge context.
    """

    def __init__(self, socket_path: str) -> None:
        if not socket_path:
            raise ValueError("socket_path must not be empty")
        self.socket_path = socket_path

    def __repr__(self) -> str:
        return f"MungeDecoder({self.socket_path!r})"

    def decode(self, credential: str | bytes) -> MungeIdentity:
        """The uid, gid and payload of a valid credential; raises on anything else."""
        raw = _credential_bytes(credential)
        lib = _library()
        payload = ctypes.c_void_p()
        length = ctypes.c_int(0)
        uid = ctypes.c_uint(0)
        gid = ctypes.c_uint(0)
        with _Context(lib, self.socket_path) as ctx:
            try:
                code = lib.decode(
                    raw, ctx, ctypes.byref(payload), ctypes.byref(length),
                    ctypes.byref(uid), ctypes.byref(gid),
                )
                data = b""
                if code == EMUNGE_SUCCESS and payload.value:
                    data = ctypes.string_at(payload.value, length.value)
            finally:
                # libmunge allocates the payload even for some failures (expired, replayed).
                if payload.value:
                    lib.free(payload)
            if code != EMUNGE_SUCCESS:
                # Only service errors get the context's detail: for credential errors it may
                # name ids, and those are not to be trusted or logged.
                detail = lib.error_text(code, ctx if code in _SERVICE_ERRORS else None)
                raise _decode_error(code, self.socket_path, detail)
        return MungeIdentity(uid=uid.value, gid=gid.value, payload=data)


def encode(payload: bytes = b"", *, socket_path: str, ttl: int | None = None) -> str:
    """A fresh credential for the calling process's uid/gid, made by the daemon at socket_path."""
    lib = _library()
    credential = ctypes.c_void_p()
    with _Context(lib, socket_path) as ctx:
        if ttl is not None:
            code = lib.ctx_set_int(ctx, MUNGE_OPT_TTL, ttl)
            if code != EMUNGE_SUCCESS:
                raise ValueError(f"MUNGE rejected ttl={ttl}: {lib.error_text(code, ctx)}")
        code = lib.encode(ctypes.byref(credential), ctx, payload or None, len(payload))
        try:
            text = ctypes.string_at(credential.value) if credential.value else b""
        finally:
            if credential.value:
                lib.free(credential)
        if code != EMUNGE_SUCCESS:
            detail = lib.error_text(code, ctx)
            if code in _SERVICE_ERRORS:
                raise _service_error(socket_path, detail)
            raise ValueError(f"MUNGE could not encode the payload: {detail}")
    return text.decode("ascii")


def _credential_bytes(credential: str | bytes) -> bytes:
    """The credential as the NUL-terminated ASCII string libmunge expects."""
    if isinstance(credential, str):
        try:
            raw = credential.encode("ascii")
        except UnicodeEncodeError:
            raise _invalid() from None
    else:
        raw = bytes(credential)
    raw = raw.strip()
    if not raw:
        raise Unauthenticated(
            "the MUNGE credential is empty", hint="send the output of `munge -n`"
        )
    if b"\0" in raw or len(raw) > MAX_CREDENTIAL_BYTES:
        raise _invalid()
    return raw


def _invalid() -> Unauthenticated:
    return Unauthenticated(
        "not a valid MUNGE credential", hint="send the unmodified output of `munge -n`"
    )


def _service_error(socket_path: str, detail: str) -> AuthServiceUnavailable:
    return AuthServiceUnavailable(
        f"cannot check credentials: the MUNGE daemon at {socket_path} is not answering ({detail})",
        hint="check that munged is running and that mungeSocketPath points to its socket",
    )


def _decode_error(code: int, socket_path: str, detail: str) -> ImageGatewayError:
    """Our error for a failed decode. Deliberately takes no uid/gid."""
    log.info("MUNGE decode via %s failed: error %d (%s)", socket_path, code, detail)
    if code in _SERVICE_ERRORS:
        return _service_error(socket_path, detail)
    if code == EMUNGE_CRED_REPLAYED:
        return Unauthenticated(
            "MUNGE credential was already used (replayed); create a fresh one",
            hint="every request needs its own credential",
        )
    if code == EMUNGE_CRED_EXPIRED:
        return Unauthenticated(
            "MUNGE credential expired; check clocks", hint=f"{_FRESH}; {_CLOCKS}"
        )
    if code == EMUNGE_CRED_REWOUND:
        return Unauthenticated(
            "MUNGE credential was created in the future; check clocks", hint=_CLOCKS
        )
    if code in (EMUNGE_CRED_INVALID, EMUNGE_BAD_REALM):
        return Unauthenticated(
            "MUNGE credential was not issued by this cluster's MUNGE key",
            hint="create the credential on a node of the system named in the request",
        )
    if code == EMUNGE_CRED_UNAUTHORIZED:
        return Unauthenticated(
            "MUNGE credential is restricted to another user and cannot be checked by the gateway",
            hint="create it without a uid/gid restriction",
        )
    if code in _MALFORMED:
        return _invalid()
    return Unauthenticated(f"MUNGE rejected the credential: {detail}", hint=_FRESH)
