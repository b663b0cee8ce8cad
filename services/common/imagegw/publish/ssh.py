"""Publishing into a remote system's image directory over SSH and SFTP (paramiko).

Host keys are checked against known_hosts and never added. Files stream to temporary
names, are verified on the remote side (size, sha256sum), flushed to stable storage
(`sync` of both files), then renamed: image, then meta; then the directory is flushed,
so a crash of the remote host never leaves a final name on a short file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import posixpath
import re
import shlex
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

import paramiko

from imagegw.domain.config import SshTarget
from imagegw.domain.errors import TransferFailed
from imagegw.publish.access import PRIVATE_MODE, Readers
from imagegw.publish.base import (
    CHUNK_SIZE,
    DIR_MODE,
    FILE_MODE,
    PRIVATE_FILE_MODE,
    DirEntry,
    ProgressCallback,
    check_file_name,
    is_temporary,
    temporary_name,
)

log = logging.getLogger(__name__)

DEFAULT_STALL_TIMEOUT = 60.0
#: A slow disk's hashing speed, to give the remote sha256sum enough time.
_HASH_BYTES_PER_SECOND = 50 * 1024 * 1024
_MAX_COMMAND_OUTPUT = 64 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NETWORK_ERRORS = (OSError, EOFError, paramiko.SSHException)


class _UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key_type: str) -> None:
        super().__init__(f"{hostname} is not in known_hosts")
        self.key_type = key_type


class _RefuseUnknownHosts(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, with an error we can tell apart from others."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> NoReturn:
        raise _UnknownHostKey(hostname, key.get_name())


@dataclass
class _Session:
    client: paramiko.SSHClient
    sftp: paramiko.SFTPClient
    #: "user@host:port", for messages.
    where: str


class SshPublisher:
    """A `Publisher` for an image directory on a remote host reached over SSH."""

    def __init__(
        self, target: SshTarget, *, stall_timeout: float = DEFAULT_STALL_TIMEOUT
    ) -> None:
        self.target = target
        self.image_dir = target.image_dir.rstrip("/") or "/"
        self._stall = stall_timeout

    def has_image(self, image_file: str, meta_file: str, size: int | None = None) -> bool:
        image_path, meta_path = self._path(image_file), self._path(meta_file)
        with self._session(f"looking for {image_file}") as session:
            try:
                image = session.sftp.stat(image_path)
                meta = session.sftp.stat(meta_path)
            except FileNotFoundError:
                return False
        if not (stat.S_ISREG(image.st_mode or 0) and stat.S_ISREG(meta.st_mode or 0)):
            return False
        return size is None or image.st_size == size

    def image_size(self, image_file: str) -> int:
        path = self._path(image_file)
        with self._session(f"looking for {image_file}") as session:
            return session.sftp.stat(path).st_size or 0

    def publish(
        self,
        source: Path,
        image_file: str,
        meta: bytes,
        meta_file: str,
        *,
        on_bytes: ProgressCallback | None = None,
        private: bool = False,
        readers: Readers | None = None,
    ) -> None:
        image_path, meta_path = self._path(image_file), self._path(meta_file)
        mode = PRIVATE_FILE_MODE if private or readers is not None else FILE_MODE
        try:
            total = Path(source).stat().st_size
            reader = open(source, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise TransferFailed(
                f"cannot read the built image {source}: {exc.strerror or exc}"
            ) from exc
        with reader, self._session(f"publishing {image_file}") as session:
            temporaries: list[str] = []
            try:
                self._ensure_directory(session)
                image_tmp = self._upload(session, reader, image_file, total, temporaries,
                                         on_bytes, mode)
                if readers is not None:
                    self._restrict(session, image_tmp, image_file, readers)
                meta_tmp = self._upload(session, io.BytesIO(meta), meta_file, len(meta),
                                        temporaries, None, mode)
                self._flush(session, image_tmp, meta_tmp, size=total)
                # The runtime reads the meta file first: it must never name a missing image.
                session.sftp.posix_rename(image_tmp, image_path)
                temporaries.remove(image_tmp)
                session.sftp.posix_rename(meta_tmp, meta_path)
                temporaries.remove(meta_tmp)
                self._flush(session, self.image_dir, size=0)
            finally:
                _remove_quietly(session, temporaries)
            where = session.where
        log.info("published %s and %s to %s:%s", image_file, meta_file, where, self.image_dir)

    def remove(self, image_file: str, meta_file: str) -> None:
        paths = [self._path(meta_file), self._path(image_file)]
        with self._session(f"removing {image_file}") as session:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    session.sftp.remove(path)
        log.info("removed %s and %s from %s", meta_file, image_file, self.image_dir)

    def cleanup_temporaries(self, older_than: float = 0.0) -> int:
        cutoff = time.time() - older_than
        removed = 0
        with self._session("removing leftover temporaries") as session:
            try:
                entries = session.sftp.listdir_attr(self.image_dir)
            except FileNotFoundError:
                return 0
            for entry in entries:
                if (
                    is_temporary(entry.filename)
                    and stat.S_ISREG(entry.st_mode or 0)
                    and (entry.st_mtime or 0) <= cutoff
                ):
                    with contextlib.suppress(FileNotFoundError):
                        session.sftp.remove(posixpath.join(self.image_dir, entry.filename))
                        removed += 1
        if removed:
            log.info("removed %d leftover temporaries from %s", removed, self.image_dir)
        return removed

    def list_entries(self) -> list[DirEntry] | None:
        with self._session("listing the image directory") as session:
            try:
                entries = session.sftp.listdir_attr(self.image_dir)
            except FileNotFoundError:
                return None
        found = [DirEntry(e.filename, e.st_size or 0, float(e.st_mtime or 0))
                 for e in entries if stat.S_ISREG(e.st_mode or 0)]
        return sorted(found, key=lambda e: e.name)

    def read_file(self, name: str, limit: int = 1 << 20) -> bytes | None:
        path = self._path(name)
        with self._session(f"reading {name}") as session:
            try:
                with session.sftp.open(path, "rb") as remote:
                    return remote.read(limit)
            except FileNotFoundError:
                return None

    def write_meta(self, meta: bytes, meta_file: str, *, private: bool = False) -> None:
        path = self._path(meta_file)
        with self._session(f"rewriting {meta_file}") as session:
            temporaries: list[str] = []
            try:
                temporary = self._upload(session, io.BytesIO(meta), meta_file, len(meta),
                                         temporaries, None,
                                         PRIVATE_FILE_MODE if private else FILE_MODE)
                self._flush(session, temporary, size=len(meta))
                session.sftp.posix_rename(temporary, path)
                temporaries.remove(temporary)
                self._flush(session, self.image_dir, size=0)
            finally:
                _remove_quietly(session, temporaries)

    def remove_file(self, name: str) -> None:
        path = self._path(name)
        with self._session(f"removing {name}") as session, \
                contextlib.suppress(FileNotFoundError):
            session.sftp.remove(path)

    def _path(self, name: str) -> str:
        return posixpath.join(self.image_dir, check_file_name(name))

    # -- connection ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _session(self, action: str) -> Iterator[_Session]:
        """Connects, opens SFTP, and turns SSH and I/O errors into TransferFailed."""
        client, where = self._connect()
        try:
            try:
                sftp = client.open_sftp()
                channel = sftp.get_channel()
                if channel is not None:
                    channel.settimeout(self._stall)
                yield _Session(client, sftp, where)
            except TransferFailed:
                raise
            except _NETWORK_ERRORS as exc:
                raise self._failed(action, where, exc) from exc
        finally:
            client.close()

    def _connect(self) -> tuple[paramiko.SSHClient, str]:
        if not self.target.hosts:
            raise TransferFailed("no ssh host is configured", hint="set host for the system")
        key = self._load_key()
        unreachable: list[str] = []
        timeout = self.target.connect_timeout
        for host, port in _addresses(self.target):
            where = f"{self.target.username}@{host}:{port}"
            client = paramiko.SSHClient()
            try:
                self._load_known_hosts(client)
                client.set_missing_host_key_policy(_RefuseUnknownHosts())
                client.connect(
                    hostname=host, port=port, username=self.target.username, pkey=key,
                    timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                    channel_timeout=timeout, allow_agent=False, look_for_keys=False,
                )
            except _UnknownHostKey as exc:
                client.close()
                raise TransferFailed(
                    f"refusing {where}: its {exc.key_type} host key is not in "
                    f"{self._known_hosts_name()}",
                    hint=f"check the host's key, then add it (ssh-keyscan -p {port} {host})",
                ) from exc
            except paramiko.BadHostKeyException as exc:
                client.close()
                raise TransferFailed(
                    f"refusing {where}: its host key does not match "
                    f"{self._known_hosts_name()} (the host may be impersonated)",
                    hint="if the host's key changed on purpose, replace its known_hosts line",
                ) from exc
            except paramiko.AuthenticationException as exc:
                client.close()
                raise TransferFailed(
                    f"ssh login to {where} with key {self.target.key} was refused",
                    hint="the public key must be in that user's authorized_keys",
                ) from exc
            except _NETWORK_ERRORS as exc:
                client.close()
                log.warning("ssh host %s unreachable: %s", where, _reason(exc))
                unreachable.append(f"{host}:{port} ({_reason(exc)})")
                continue
            except BaseException:
                client.close()
                raise
            log.debug("connected to %s", where)
            return client, where
        failure = TransferFailed(
            f"cannot reach any ssh host for {self.image_dir}: {'; '.join(unreachable)}",
            hint="check that the hosts are up and the ssh port is right",
        )
        failure.retryable = True
        raise failure

    def _load_key(self) -> paramiko.PKey:
        path = self.target.key
        if not path:
            raise TransferFailed("no ssh key is configured", hint="set ssh.key for the system")
        try:
            return paramiko.PKey.from_path(path)
        except OSError as exc:
            raise TransferFailed(f"cannot read the ssh key {path}: {exc.strerror}") from exc
        except (paramiko.SSHException, ValueError, TypeError) as exc:
            raise TransferFailed(
                f"cannot load the ssh key {path}: {exc}",
                hint="an unencrypted ed25519, ECDSA or RSA private key",
            ) from exc

    def _load_known_hosts(self, client: paramiko.SSHClient) -> None:
        path = self.target.known_hosts
        if path is None:
            client.load_system_host_keys()  # ~/.ssh/known_hosts of this user, if any
            return
        try:
            client.load_host_keys(path)
        except OSError as exc:
            raise TransferFailed(
                f"cannot read the known_hosts file {path}: {exc.strerror}",
                hint="set ssh.knownHosts to a readable known_hosts file",
            ) from exc
        except (paramiko.SSHException, ValueError) as exc:
            raise TransferFailed(f"the known_hosts file {path} is malformed: {exc}") from exc

    def _known_hosts_name(self) -> str:
        return self.target.known_hosts or "~/.ssh/known_hosts"

    def _failed(self, action: str, where: str, exc: BaseException) -> TransferFailed:
        hint = None
        retryable = False
        if isinstance(exc, TimeoutError):
            reason = f"no progress for {self._stall:g} s"
            retryable = True
        elif isinstance(exc, OSError) and exc.errno == errno.EACCES:
            reason = "permission denied"
            hint = f"{self.target.username} needs write access to {self.image_dir}"
        else:
            reason = _reason(exc)
            retryable = isinstance(exc, EOFError | paramiko.SSHException)
        failure = TransferFailed(f"{action} on {where}:{self.image_dir} failed: {reason}",
                                 hint=hint)
        failure.retryable = retryable
        return failure

    # -- transfer -----------------------------------------------------------------------

    def _ensure_directory(self, session: _Session) -> None:
        try:
            attributes = session.sftp.stat(self.image_dir)
        except FileNotFoundError:
            self._make_directories(session)
            return
        if not stat.S_ISDIR(attributes.st_mode or 0):
            raise TransferFailed(f"{self.image_dir} on {session.where} is not a directory")

    def _make_directories(self, session: _Session) -> None:
        current = "/" if self.image_dir.startswith("/") else ""
        for part in filter(None, self.image_dir.split("/")):
            current = posixpath.join(current, part)
            try:
                session.sftp.stat(current)
            except FileNotFoundError:
                try:
                    session.sftp.mkdir(current, DIR_MODE)
                except OSError:
                    # Fine if another publish made it meanwhile; else report why mkdir failed.
                    if not _exists(session, current):
                        raise

    def _upload(
        self,
        session: _Session,
        reader: BinaryIO,
        final_name: str,
        total: int,
        temporaries: list[str],
        on_bytes: ProgressCallback | None,
        mode: int,
    ) -> str:
        """Streams `reader` to a fresh temporary, verifies it remotely, returns its path."""
        temporary = posixpath.join(self.image_dir, temporary_name(final_name))
        digest = hashlib.sha256()
        done = 0
        remote = session.sftp.open(temporary, "wbx")
        temporaries.append(temporary)
        with remote:
            remote.chmod(mode)  # before any byte of a private image is there to read
            remote.set_pipelined(True)
            while chunk := reader.read(CHUNK_SIZE):
                remote.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if on_bytes is not None:
                    on_bytes(done, total)
        self._verify(session, temporary, final_name, done, digest.hexdigest())
        session.sftp.chmod(temporary, mode)
        return temporary

    def _restrict(self, session: _Session, path: str, final_name: str, readers: Readers) -> None:
        """0600 and the readers' POSIX ACL (setfacl), on the temporary before its rename."""
        session.sftp.chmod(path, PRIVATE_MODE)
        command = f"setfacl --set {shlex.quote(readers.setfacl_spec())} -- {shlex.quote(path)}"
        status, output = _run(session, command, self._stall, self._stall)
        if status != 0:
            raise TransferFailed(
                f"cannot restrict {final_name} on {session.where} to its ACL: setfacl exited "
                f"with {status}: {output.strip()[:200]!r}",
                hint="private images on systems publishing for enroot or Apptainer need "
                     "setfacl (package acl) and POSIX ACLs on the remote image directory")

    def _verify(
        self, session: _Session, path: str, final_name: str, size: int, sha256: str
    ) -> None:
        # Pipelined SFTP writes do not report every failed write: check what arrived.
        remote_size = session.sftp.stat(path).st_size
        if remote_size != size:
            raise TransferFailed(
                f"the copy of {final_name} on {session.where} has {remote_size} bytes, "
                f"expected {size}",
                hint=f"is the file system holding {self.image_dir} full?",
            )
        remote_sha256 = self._remote_sha256(session, path, size)
        if remote_sha256 != sha256:
            raise TransferFailed(
                f"the copy of {final_name} on {session.where} has sha256 {remote_sha256}, "
                f"expected {sha256}"
            )

    def _flush(self, session: _Session, *paths: str, size: int) -> None:
        """Puts files (or a directory, after renames in it) on the remote host's stable
        storage: `sync FILE...` fsyncs each one (GNU coreutils 8.24 and later)."""
        timeout = self._stall + size / _HASH_BYTES_PER_SECOND
        command = "sync -- " + " ".join(shlex.quote(path) for path in paths)
        status, output = _run(session, command, timeout, self._stall)
        if status != 0:
            raise TransferFailed(
                f"flushing {', '.join(paths)} on {session.where} failed: sync exited with "
                f"{status}: {output.strip()[:200]!r}",
                hint="the remote host needs GNU coreutils 8.24 or later (sync FILE)",
            )

    def _remote_sha256(self, session: _Session, path: str, size: int) -> str:
        timeout = self._stall + size / _HASH_BYTES_PER_SECOND
        status, output = _run(session, f"sha256sum -- {shlex.quote(path)}", timeout, self._stall)
        words = output.split()
        # GNU sha256sum prefixes the line with "\" when the name needs escaping.
        found = words[0].lstrip("\\") if words else ""
        if status != 0 or not _SHA256.fullmatch(found):
            raise TransferFailed(
                f"checking the copy on {session.where} failed: sha256sum exited with "
                f"{status}: {output.strip()[:200]!r}",
                hint="the remote host needs a working sha256sum (GNU coreutils)",
            )
        return found


def _run(session: _Session, command: str, timeout: float, open_timeout: float) -> tuple[int, str]:
    """Runs one command (already quoted) and returns its exit status and output."""
    transport = session.client.get_transport()
    if transport is None or not transport.is_active():
        raise paramiko.SSHException("the connection was closed")
    channel = transport.open_session(timeout=open_timeout)
    try:
        channel.settimeout(timeout)
        channel.set_combine_stderr(True)
        channel.exec_command(command)
        output = bytearray()
        while data := channel.recv(32768):
            if len(output) < _MAX_COMMAND_OUTPUT:
                output += data
        if not channel.status_event.wait(timeout):
            raise TimeoutError(f"{command.split()[0]} did not finish")
        return channel.exit_status, output.decode("utf-8", "replace")
    finally:
        channel.close()


def _remove_quietly(session: _Session, paths: list[str]) -> None:
    transport = session.client.get_transport()
    if not paths or transport is None or not transport.is_active():
        return
    for path in paths:
        try:
            session.sftp.remove(path)
        except _NETWORK_ERRORS as exc:
            log.warning("could not remove the temporary %s on %s: %s", path, session.where, exc)


def _exists(session: _Session, path: str) -> bool:
    try:
        session.sftp.stat(path)
    except FileNotFoundError:
        return False
    return True


def _addresses(target: SshTarget) -> list[tuple[str, int]]:
    """(host, port) pairs; an entry may carry its own port as `host:port` or `[v6]:port`."""
    addresses = []
    for entry in target.hosts:
        host, port = entry, target.port
        if entry.startswith("["):
            inner, _, rest = entry[1:].partition("]")
            host = inner
            if rest.startswith(":") and rest[1:].isdigit():
                port = int(rest[1:])
        elif entry.count(":") == 1:
            name, _, number = entry.partition(":")
            if number.isdigit():
                host, port = name, int(number)
        addresses.append((host, port))
    return addresses


def _reason(exc: BaseException) -> str:
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        causes = {(error.strerror if isinstance(error, OSError) else None) or str(error)
                  for error in exc.errors.values()}
        return "; ".join(sorted(causes)) or "cannot connect"
    text = str(exc).strip()
    return text or type(exc).__name__
