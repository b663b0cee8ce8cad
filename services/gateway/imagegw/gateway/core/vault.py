"""Registry credentials at rest: one Fernet-encrypted file per (uid, registry).

`CredentialVault` owns the key file (created 0600 on first use, or the site's
CredentialKeyFile) and a directory of sealed files (0700 per uid, 0600 per file).
Nothing here logs or formats a password; `RegistryCredentials.__repr__` hides it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from imagegw.domain.errors import ConfigError
from imagegw.domain.model import RegistryCredentials

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

__all__ = ["CredentialVault"]

log = logging.getLogger(__name__)


def _fernet() -> type[Fernet]:
    """cryptography's Fernet, imported when credentials are first used: it adds ~8 MiB
    to a process that imports it, which most gateways never need."""
    from cryptography.fernet import Fernet

    return Fernet


class CredentialVault:
    def __init__(self, directory: str | os.PathLike[str], key_file: str | os.PathLike[str]
                 ) -> None:
        self.directory = Path(directory)
        self.key_file = Path(key_file)
        self._fernet: Fernet | None = None
        self._lock = threading.Lock()

    def put(self, uid: int, registry: str, credentials: RegistryCredentials) -> None:
        """Keeps the credentials of `uid` for `registry`, replacing earlier ones."""
        token = self._cipher().encrypt(json.dumps({
            "registry": registry, "username": credentials.username,
            "password": credentials.password}).encode())
        path = self._path(uid, registry)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(token)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def get(self, uid: int, registry: str) -> RegistryCredentials | None:
        """The credentials `uid` keeps for `registry`, or None."""
        if uid < 0:
            return None
        try:
            token = self._path(uid, registry).read_bytes()
        except FileNotFoundError:
            return None
        cipher = self._cipher()
        from cryptography.fernet import InvalidToken

        try:
            data = json.loads(cipher.decrypt(token))
        except (InvalidToken, ValueError):
            log.warning("ignoring unreadable stored credentials of uid %d for %s "
                        "(was the key file replaced?)", uid, registry)
            return None
        if data.get("registry") != registry:
            return None
        return RegistryCredentials(data["username"], data["password"])

    def remove(self, uid: int, registry: str) -> bool:
        """Forgets the credentials; False when there were none."""
        try:
            self._path(uid, registry).unlink()
        except FileNotFoundError:
            return False
        return True

    def _path(self, uid: int, registry: str) -> Path:
        digest = hashlib.sha256(registry.encode()).hexdigest()[:32]
        return self.directory / str(int(uid)) / f"{digest}.cred"

    def _cipher(self) -> Fernet:
        with self._lock:
            if self._fernet is None:
                self._fernet = _fernet()(self._load_or_create_key())
            return self._fernet

    def _load_or_create_key(self) -> bytes:
        try:
            self.key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return self._read_key()
        except OSError as exc:
            raise ConfigError(f"CredentialKeyFile: cannot create {self.key_file}: "
                              f"{exc.strerror}") from exc
        key = _fernet().generate_key()
        with os.fdopen(fd, "wb") as out:
            out.write(key)
            os.fsync(out.fileno())
        log.info("created the registry credential key %s", self.key_file)
        return key

    def _read_key(self) -> bytes:
        try:
            mode = self.key_file.stat().st_mode
            key = self.key_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"CredentialKeyFile: cannot read {self.key_file}: "
                              f"{exc.strerror}") from exc
        if mode & 0o077:
            raise ConfigError(f"CredentialKeyFile: {self.key_file} is readable by others "
                              f"(mode {mode & 0o777:o})", hint=f"chmod 600 {self.key_file}")
        try:
            _fernet()(key)
        except ValueError as exc:
            raise ConfigError(f"CredentialKeyFile: {self.key_file} does not hold a Fernet key "
                              "(32 url-safe base64 bytes)") from exc
        return key
