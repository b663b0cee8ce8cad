"""Publishing over SSH through the system's OpenSSH client, at OpenSSH's own speed.

One `ssh` session per publish runs a short POSIX shell script on the remote host: it
creates the temporary and appends what arrives to it (`dd`, length-prefixed frames, so a
sender that dies mid-stream is told apart from a finished one: the script then exits and
its trap removes the temporaries). Once the data has ended, the script flushes the
image temporary to disk and reads it back for its POSIX `cksum` CRC, while the sender
computes the local file's; the sender's closing line then names that CRC and the size,
then the meta file's bytes; the script writes and flushes the meta temporary, checks
the image temporary against size and CRC, and renames image then meta.

Why a CRC of the written file, and not a sha256 of what arrives: SSH's MAC already
guards every byte on the wire; what the check guards against is a copy on the remote
file system that is short or damaged (a frame lost or misplaced, a write that went
wrong), so it reads the temporary itself, once, from the page cache, and compares it
with the local file, also read once (`cksum`, in its own process). Both ends have
`cksum` (coreutils, POSIX), and it costs 0.2 s of CPU per GB where sha256 costs 0.5-2 s
(with or without SHA-NI), and splitting the stream into a hasher (`tee`, 8 KiB
copies) costs 3.4 s: on a loopback link both ends share the CPU, and on a busy login
node the remote side's CPU is someone else's. The data goes from the file to the ssh
pipe with sendfile(2): this process never copies it.

The host-key policy is the paramiko publisher's: known_hosts only, never added
(StrictHostKeyChecking=yes, no user or system ssh_config), the configured key only.
Lookups, removal and cleanup stay on `SshPublisher` (paramiko): they move no bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from imagegw.domain.config import SshTarget
from imagegw.domain.errors import TransferFailed
from imagegw.publish.access import Readers
from imagegw.publish.base import (
    FILE_MODE,
    PRIVATE_FILE_MODE,
    ProgressCallback,
    check_file_name,
    temporary_name,
)
from imagegw.publish.ssh import DEFAULT_STALL_TIMEOUT, SshPublisher, _addresses

log = logging.getLogger(__name__)

#: AES-GCM first: every x86 and ARM server CPU of the last decade does it in hardware,
#: and it runs faster there than OpenSSH's default chacha20-poly1305.
CIPHERS = (
    "aes128-gcm@openssh.com,aes256-gcm@openssh.com,"
    "chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr"
)
#: Bytes per frame: one `dd` per frame on the remote side.
FRAME_SIZE = 64 * 1024 * 1024
#: Bytes per write into the ssh pipe: the stall watchdog sees progress this often.
_WRITE_SIZE = 1024 * 1024
#: The local `cksum` (coreutils) that the remote side's is compared with.
CKSUM = "cksum"
#: A slow disk's speed, to give the remote sync enough time.
_SYNC_BYTES_PER_SECOND = 50 * 1024 * 1024
_MAX_OUTPUT = 64 * 1024
_PIPE_SIZE = 1024 * 1024

# Positional parameters: 1 directory, 2 image temporary, 3 image, 4 meta temporary,
# 5 meta, 6 mode. Exit codes 20-29 name the step that failed (see _STEPS). The frame
# reader and dd read exactly the announced bytes, never beyond (dd count_bytes). The
# last frame line, "0 P", ends the data and announces P bytes written over the head of
# the temporary (0: none). Then, before the sender's CRC arrives (it is read from the
# finished local file meanwhile), the temporary is flushed to disk while cksum reads it
# back (page cache); the COMMIT line's CRC and size are checked before any rename.
_SCRIPT = "; ".join([
    'd=$1; t=$1/$2; f=$1/$3; m=$1/$4; g=$1/$5; mode=$6',
    "trap 'rm -f -- \"$t\" \"$m\"' EXIT",
    "trap 'exit 1' HUP INT TERM PIPE",
    'command -v cksum >/dev/null 2>&1 || exit 29',
    'if [ ! -d "$d" ]; then umask 022; mkdir -p -- "$d" || exit 20; fi',
    '[ -d "$d" ] || exit 21',
    'umask 077',
    'set -C; : > "$t" || exit 22; set +C; chmod "$mode" "$t" || exit 22',
    'echo READY',
    # A sender that dies mid-stream leaves a line cut short or none: only a whole "0 P"
    # line (read returned 0) ends the data.
    'end=',
    'while IFS=" " read -r n p; do '
    'if [ "$n" = 0 ]; then end=1; break; fi; '
    # "T OFFSET": cut the temporary back to OFFSET (the sender sends those bytes again).
    'if [ "$n" = T ]; then [ "$p" -ge 0 ] 2>/dev/null || exit 24; '
    'dd of="$t" bs=1 seek="$p" count=0 2>/dev/null || exit 23; continue; fi; '
    '[ "$n" -gt 0 ] 2>/dev/null || exit 24; '
    # oflag=nocache: dd asks the kernel to start writing each block as it lands (pages
    # still dirty stay cached): the final sync finds little left to write.
    'dd bs=131072 iflag=fullblock,count_bytes count="$n" oflag=append,nocache conv=notrunc '
    'of="$t" 2>/dev/null || exit 23; '
    'done',
    '[ -n "$end" ] || exit 24',
    'if [ "$p" -gt 0 ] 2>/dev/null; then '
    'dd bs="$p" count=1 iflag=fullblock of="$t" conv=notrunc 2>/dev/null || exit 23; fi',
    '{ sync -- "$t" 2>/dev/null || sync; } & y=$!',
    's=$(cksum < "$t") || exit 23',
    'IFS=" " read -r w a b c || exit 24',
    '[ "$w" = COMMIT ] || exit 24',
    'want=$a; size=$b; mlen=$c',
    'set -C; : > "$m" || exit 22; set +C; chmod "$mode" "$m" || exit 22',
    'if [ "$mlen" -gt 0 ]; then '
    'dd bs="$mlen" count=1 iflag=fullblock of="$m" 2>/dev/null || exit 27; fi',
    '[ "$(stat -c %s -- "$m")" = "$mlen" ] || exit 27',
    'sync -- "$m" 2>/dev/null || sync',
    'wait "$y"',
    'set -- $s',
    '[ "$2" = "$size" ] || { echo "SIZE $2"; exit 25; }',
    '[ "$1" = "$want" ] || { echo "CKSUM $1"; exit 26; }',
    # The runtime reads the meta file first: it must never name a missing image.
    'mv -fT -- "$t" "$f" || exit 28',
    'mv -fT -- "$m" "$g" || exit 28',
    'sync -- "$d" 2>/dev/null',
    'echo DONE',
])
_STEPS = {
    20: "creating the image directory",
    21: "the image directory is not a directory",
    22: "creating the temporary",
    23: "writing the image",
    24: "the sender stopped before the end",
    25: "the copy has a different size",
    26: "the copy has a different checksum (cksum)",
    27: "writing the meta file",
    28: "renaming into place",
    29: "the remote host has no cksum (coreutils)",
}


class _Unreachable(Exception):
    """The ssh client could not reach a host (try the next one)."""


class OpenSshPublisher(SshPublisher):
    """An `SshPublisher` whose publish streams through the system's `ssh` client."""

    def __init__(
        self,
        target: SshTarget,
        *,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        ssh_program: str = "ssh",
    ) -> None:
        super().__init__(target, stall_timeout=stall_timeout)
        self._ssh = ssh_program

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
        if readers is not None:
            # Their POSIX ACL is set on the temporary before its rename (SshPublisher).
            super().publish(source, image_file, meta, meta_file, on_bytes=on_bytes,
                            private=private, readers=readers)
            return
        try:
            reader = open(source, "rb")  # noqa: SIM115 - closed by the with below
            total = os.fstat(reader.fileno()).st_size
        except OSError as exc:
            raise TransferFailed(
                f"cannot read the built image {source}: {exc.strerror or exc}"
            ) from exc
        with reader, LocalChecksum(reader.fileno()) as checksum, \
                self.stream(image_file, meta_file, private=private) as remote:
            for offset in range(0, total, FRAME_SIZE):
                count = min(FRAME_SIZE, total - offset)
                if remote.send_file(reader.fileno(), offset, count) < count:
                    raise TransferFailed(f"the image {source} became shorter while it was "
                                         "sent")
                if on_bytes is not None:
                    on_bytes(min(offset + FRAME_SIZE, total), total)
            remote.end_data()  # the remote check starts before this side's CRC is known
            remote.commit(meta, checksum.result())
        log.info("published %s and %s to %s:%s", image_file, meta_file, remote.where,
                 self.image_dir)

    @contextlib.contextmanager
    def stream(
        self, image_file: str, meta_file: str, *, private: bool = False
    ) -> Iterator[RemoteImage]:
        """An open remote temporary on the first host that answers; `send` bytes, then
        `commit`. Leaving the block without a commit ends the session, and the remote
        side removes its temporaries."""
        if not self.target.hosts:
            raise TransferFailed("no ssh host is configured", hint="set host for the system")
        self._check_key()
        mode = PRIVATE_FILE_MODE if private else FILE_MODE
        directory = self.image_dir if self.image_dir.startswith("/") else f"./{self.image_dir}"
        names = (directory, temporary_name(image_file), check_file_name(image_file),
                 temporary_name(meta_file), check_file_name(meta_file), f"{mode:04o}")
        unreachable: list[str] = []
        for host, port in _addresses(self.target):
            remote = RemoteImage(self, host, port, self._command(host, port, names))
            try:
                remote.wait_ready()
            except _Unreachable as exc:
                log.warning("ssh host %s unreachable: %s", remote.where, exc)
                unreachable.append(f"{host}:{port} ({exc})")
                continue
            try:
                yield remote
            finally:
                remote.close()
            return
        failure = TransferFailed(
            f"cannot reach any ssh host for {self.image_dir}: {'; '.join(unreachable)}",
            hint="check that the hosts are up and the ssh port is right",
        )
        failure.retryable = True
        raise failure

    def _check_key(self) -> None:
        key = self.target.key
        if not key:
            raise TransferFailed("no ssh key is configured", hint="set ssh.key for the system")
        if not os.access(key, os.R_OK):
            raise TransferFailed(f"cannot read the ssh key {key}")
        if shutil.which(self._ssh) is None:
            raise TransferFailed(
                f"the OpenSSH client {self._ssh!r} is not installed on the worker",
                hint="install openssh-client",
            )

    def _command(self, host: str, port: int, names: tuple[str, ...]) -> list[str]:
        timeout = max(1, round(self.target.connect_timeout))
        alive = max(1, round(self._stall / 3))
        options = {
            "BatchMode": "yes",
            "StrictHostKeyChecking": "yes",
            "UpdateHostKeys": "no",
            "CheckHostIP": "no",
            "IdentitiesOnly": "yes",
            "IdentityAgent": "none",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "ControlMaster": "no",
            "ControlPath": "none",
            "ClearAllForwardings": "yes",
            "Compression": "no",
            "Ciphers": CIPHERS,
            "ConnectTimeout": str(timeout),
            "ServerAliveInterval": str(alive),
            "ServerAliveCountMax": "3",
            "LogLevel": "ERROR",
        }
        if self.target.known_hosts is not None:
            # ssh splits this option's value at blanks (several files): quote the one.
            options["UserKnownHostsFile"] = f'"{self.target.known_hosts}"'
            options["GlobalKnownHostsFile"] = "/dev/null"
        remote = " ".join(shlex.quote(word) for word in
                          ("sh", "-c", _SCRIPT, "imagegw-publish", *names))
        command = [self._ssh, "-F", "/dev/null", "-T", "-x", "-a"]
        for name, value in options.items():
            command += ["-o", f"{name}={value}"]
        return [*command, "-i", self.target.key, "-p", str(port), "-l", self.target.username,
                "--", host, remote]


class LocalChecksum:
    """The POSIX `cksum` (CRC, size) of an open local file, computed by coreutils in its
    own process from the moment this is made (beside the transfer, on another core)."""

    def __init__(self, fd: int) -> None:
        try:
            # Its own open file (own offset) on the very file `fd` is, even if renamed.
            with open(f"/proc/self/fd/{fd}", "rb") as reader:
                self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
                    [CKSUM], stdin=reader, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                )
        except FileNotFoundError as exc:
            raise TransferFailed(
                f"cannot check what is published: {CKSUM!r} is not installed on the worker",
                hint="install coreutils",
            ) from exc

    def __enter__(self) -> LocalChecksum:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def result(self) -> tuple[int, int]:
        """(CRC, size) once the whole file is read; raises TransferFailed."""
        assert self._process is not None
        out, errors = self._process.communicate()
        words = out.split()
        if self._process.returncode != 0 or len(words) != 2:
            raise TransferFailed(
                f"{CKSUM} of the image failed: "
                f"{errors.decode('utf-8', 'replace').strip() or out!r}"
            )
        return int(words[0]), int(words[1])

    def close(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.communicate()
            self._process = None


class RemoteImage:
    """One ssh session writing one image: frames in, a verdict out."""

    def __init__(
        self, publisher: OpenSshPublisher, host: str, port: int, command: list[str]
    ) -> None:
        self.host, self.port = host, port
        self.where = f"{publisher.target.username}@{host}:{port}"
        self._publisher = publisher
        self._stall = publisher._stall
        self._size = 0
        self._patch: bytes | None = None
        self._ended_data = False
        self._committed = False
        self._ready = threading.Event()
        self._output_ended = threading.Event()
        self._lines: list[str] = []
        self._errors = bytearray()
        self._progress = time.monotonic()
        self._writing = False
        self._stalled = False
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self._process.stdin is not None
        self._stdin = self._process.stdin.fileno()
        with contextlib.suppress(OSError):  # fewer stalls of ssh while this side hashes
            fcntl.fcntl(self._stdin, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        self._readers = [
            threading.Thread(target=self._read_lines, daemon=True, name="ssh-stdout"),
            threading.Thread(target=self._read_errors, daemon=True, name="ssh-stderr"),
        ]
        for reader in self._readers:
            reader.start()
        self._watchdog = threading.Thread(target=self._watch, daemon=True, name="ssh-stall")
        self._watching = False

    def wait_ready(self) -> None:
        """Returns once the remote temporary exists; raises _Unreachable or TransferFailed."""
        self._watching = False  # connecting has its own deadline
        patience = self._publisher.target.connect_timeout + self._stall
        deadline = time.monotonic() + patience
        while not self._ready.wait(0.05):
            if self._process.poll() is not None:
                self._finish_readers()
                if self._ready.is_set():
                    break
                raise self._failure("connecting")
            if time.monotonic() > deadline:
                self._process.kill()
                self._process.wait()
                raise _Unreachable(f"no answer in {patience:g} s")
        self._progress = time.monotonic()
        self._watching = True
        self._watchdog.start()

    def send(self, data: bytes | memoryview) -> None:
        """Appends `data` to the remote temporary."""
        if not data:
            return
        view = memoryview(data)
        self._write(b"%d\n" % len(view))
        for start in range(0, len(view), _WRITE_SIZE):
            self._write(view[start:start + _WRITE_SIZE])
        self._size += len(view)

    def send_file(self, fd: int, offset: int, count: int) -> int:
        """Appends `count` bytes of the local file `fd` from `offset` to the remote
        temporary, without copying them through this process (sendfile into the pipe).
        Returns how many came from the file: fewer when it ended early (a writer cut it
        short meanwhile), the frame then being filled up with zeros (cut them off with
        `truncate`)."""
        if count <= 0:
            return 0
        self._write(b"%d\n" % count)
        start, end = offset, offset + count
        self._progress = time.monotonic()
        self._writing = True
        try:
            while offset < end:
                sent = os.sendfile(self._stdin, fd, offset, min(_WRITE_SIZE, end - offset))
                if sent == 0:
                    break
                offset += sent
                self._progress = time.monotonic()
        except OSError as exc:
            raise self._ended() from exc
        finally:
            self._writing = False
        if offset < end:  # the remote `dd` reads the whole frame
            zeros = bytes(min(_WRITE_SIZE, end - offset))
            for at in range(offset, end, len(zeros)):
                self._write(zeros[:end - at])
        self._size += count
        return offset - start

    def truncate(self, offset: int) -> None:
        """Cuts the remote temporary back to `offset` bytes; what follows is sent again."""
        self._write(b"T %d\n" % offset)
        self._size = offset

    def patch_head(self, head: bytes) -> None:
        """Rewrites the first len(head) bytes of the remote temporary (after every send),
        e.g. a squashfs superblock written last."""
        self._patch = bytes(head)

    def end_data(self) -> None:
        """Ends the data (the head patched): the remote side starts flushing its temporary
        and reading it back for its CRC at once, while this side computes its own."""
        if self._ended_data:
            return
        patch = self._patch or b""
        self._write(b"0 %d\n" % len(patch) + patch)
        self._ended_data = True

    def commit(self, meta: bytes, checksum: tuple[int, int]) -> None:
        """Ends the stream: the remote side checks its temporary (head patched) against
        `checksum`, the local file's (CRC, size) from `LocalChecksum`, writes `meta`,
        syncs and renames both into place; raises TransferFailed when any step fails."""
        crc, size = checksum
        self.end_data()
        self._write(f"COMMIT {crc} {size} {len(meta)}\n".encode() + meta)
        self._close_stdin()
        # The remote side now checks and syncs what it wrote; give a slow disk its time.
        # Its answer ends ssh's output: waiting for that (not polling the process, which
        # Popen.wait with a timeout does every 50 ms) adds no latency to the publish.
        self._watching = False
        patience = self._stall + size / _SYNC_BYTES_PER_SECOND
        if self._output_ended.wait(patience):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(self._stall)
        if self._process.poll() is None:
            self._stalled = True
            self._process.kill()
            self._process.wait()
        self._finish_readers()
        if self._process.returncode != 0 or "DONE" not in self._lines:
            raise self._failure("publishing")
        self._committed = True

    def close(self) -> None:
        """Ends the session; without a commit the remote side removes its temporaries."""
        self._watching = False
        if self._process.poll() is None and not self._committed:
            self._process.kill()
        with contextlib.suppress(OSError):
            self._close_stdin()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(5)
        for pipe in (self._process.stdout, self._process.stderr):
            if pipe is not None:
                pipe.close()

    # -- the process ---------------------------------------------------------------------

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        # Only a write that does not move counts as a stall: a stream may wait between
        # writes for as long as its producer takes (publish/follow.py).
        self._progress = time.monotonic()
        self._writing = True
        try:
            while view:
                written = os.write(self._stdin, view)
                view = view[written:]
                self._progress = time.monotonic()
        except OSError as exc:
            raise self._ended() from exc
        finally:
            self._writing = False

    def _ended(self) -> Exception:
        """The error for a write into a session that ended: say why it did."""
        self._process.kill()
        self._process.wait()
        self._finish_readers()
        return self._failure("publishing")

    def _close_stdin(self) -> None:
        stdin = self._process.stdin
        if stdin is not None and not stdin.closed:
            stdin.close()

    def _watch(self) -> None:
        tick = min(0.25, self._stall / 4)
        while self._watching and self._process.poll() is None:
            time.sleep(tick)
            if self._watching and self._writing and \
                    time.monotonic() - self._progress > self._stall:
                self._stalled = True
                self._process.kill()
                return

    def _read_lines(self) -> None:
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if len(self._lines) < 100:
                self._lines.append(line)
            if line == "READY":
                self._ready.set()
        self._output_ended.set()

    def _read_errors(self) -> None:
        assert self._process.stderr is not None
        while data := os.read(self._process.stderr.fileno(), 65536):
            if len(self._errors) < _MAX_OUTPUT:
                self._errors += data

    def _finish_readers(self) -> None:
        for reader in self._readers:
            reader.join(5)

    def _failure(self, action: str) -> Exception:
        """The error for a session that ended badly, from its exit status and output."""
        publisher, target = self._publisher, self._publisher.target
        status = self._process.returncode
        errors = self._errors.decode("utf-8", "replace").strip()
        last = errors.splitlines()[-1] if errors else ""
        known_hosts = target.known_hosts or "~/.ssh/known_hosts"
        where = f"{self.where}:{publisher.image_dir}"
        if self._stalled:
            failure = TransferFailed(f"{action} on {where} failed: no progress for "
                                     f"{self._stall:g} s")
            failure.retryable = True
            return failure
        if status == 255:
            if "REMOTE HOST IDENTIFICATION HAS CHANGED" in errors:
                return TransferFailed(
                    f"refusing {self.where}: its host key does not match {known_hosts} "
                    "(the host may be impersonated)",
                    hint="if the host's key changed on purpose, replace its known_hosts line",
                )
            if "Host key verification failed" in errors:
                return TransferFailed(
                    f"refusing {self.where}: its host key is not in {known_hosts}",
                    hint=f"check the host's key, then add it "
                         f"(ssh-keyscan -p {self.port} {self.host})",
                )
            if "UNPROTECTED PRIVATE KEY FILE" in errors:
                return TransferFailed(
                    f"ssh refuses the key {target.key}: others may read it",
                    hint=f"chmod 600 {target.key} (owned by the service account)",
                )
            if "Permission denied" in errors:
                return TransferFailed(
                    f"ssh login to {self.where} with key {target.key} was refused",
                    hint="the public key must be in that user's authorized_keys",
                )
            if not self._ready.is_set():
                return _Unreachable(last or f"ssh exited with {status}")
            failure = TransferFailed(f"{action} on {where} failed: the connection was lost "
                                     f"({last or 'ssh exited with 255'})")
            failure.retryable = True
            return failure
        step = _STEPS.get(status or 0, f"the remote script exited with {status}")
        detail = " ".join(line for line in self._lines if line not in ("READY", "DONE"))
        hint = None
        if "Permission denied" in errors:
            step += ": permission denied"
            hint = f"{target.username} needs write access to {publisher.image_dir}"
        elif "No space left" in errors or "quota" in errors.lower():
            hint = f"is the file system holding {publisher.image_dir} full?"
        elif errors:
            step += f": {last[:200]}"
        if detail:
            step += f" ({detail[:200]})"
        failure = TransferFailed(f"{action} on {where} failed: {step}", hint=hint)
        failure.retryable = status in (23, 25, 26)
        return failure
