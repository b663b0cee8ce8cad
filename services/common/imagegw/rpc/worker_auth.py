"""Who may ask a worker to build: the secret the gateways and workers of a site share.

With `WorkerTLS`, mutual TLS authenticates both ends and no secret is used. Without it,
every WorkerService call carries the secret read from `WorkerTokenFile` (default
`<DataDirectory>/worker.token`, created 0600 when absent) as call metadata, and the worker
compares it in constant time before it looks at the request. The file must not be readable
by group or others; a gateway and its workers on other hosts are given the same file.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

from imagegw.domain.config import Config
from imagegw.domain.errors import ConfigError

__all__ = ["METADATA_KEY", "authorized", "call_metadata", "load_worker_token", "token_path"]

METADATA_KEY = "imagegw-worker-token"
TOKEN_FILE = "worker.token"
MIN_TOKEN_LENGTH = 32


def token_path(config: Config) -> Path:
    if config.worker_token_file:
        return Path(config.worker_token_file)
    if not config.data_dir:
        raise ConfigError("WorkerTokenFile: required when there is no DataDirectory",
                          hint="or set WorkerTLS")
    return Path(config.data_dir) / TOKEN_FILE


def _create(path: Path) -> None:
    """Writes a new random secret at `path` unless one is there (atomically: a gateway and
    a worker starting together end up with the same secret)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(48) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_worker_token(config: Config) -> str | None:
    """The shared secret (None with WorkerTLS). The default file is created when absent;
    a file others may read, or a short secret, stops start-up."""
    if config.worker_tls is not None:
        return None
    path = token_path(config)
    if not config.worker_token_file and not path.exists():
        try:
            _create(path)
        except OSError as exc:
            raise ConfigError(
                f"WorkerTokenFile: cannot create the worker secret {path}: "
                f"{exc.strerror or exc}",
                hint="start the gateway first (it creates the file when it can write there), "
                     "or set WorkerTokenFile to a secret every gateway and worker reads") from exc
    try:
        mode = path.stat().st_mode
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"WorkerTokenFile: cannot read {path}: {exc.strerror}") from exc
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(f"WorkerTokenFile: {path} is readable by other users "
                          f"(mode {stat.S_IMODE(mode):04o})", hint=f"chmod 600 {path}")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"WorkerTokenFile: {path} holds fewer than {MIN_TOKEN_LENGTH} "
                          "characters", hint="put a long random secret in it, e.g. "
                                             "`openssl rand -base64 48`")
    return token


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return () if token is None else ((METADATA_KEY, token),)


def authorized(metadata: Sequence[tuple[str, str | bytes]], token: str) -> bool:
    """Whether the call carries exactly one copy of the secret (compared in constant time)."""
    values = [value for key, value in metadata if key.lower() == METADATA_KEY]
    if len(values) != 1:
        return False
    value = values[0]
    sent = value if isinstance(value, bytes) else value.encode("utf-8", "replace")
    return hmac.compare_digest(sent, token.encode("utf-8"))
