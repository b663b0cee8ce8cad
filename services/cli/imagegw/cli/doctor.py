"""`imagegw doctor`: checks a configuration against the host it runs on.

One line per check: OK, WARN (works, but not as well as it could) or FAIL (a configured
feature cannot work), what was checked and what to fix. The exit status is 1 when any
check failed. Checks use the code the services use (the gzip engine probe, the MUNGE
binding, the SSH publisher with its host-key policy, the Redis client), never auto-add a
host key, and write nothing but a probe image in a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from imagegw.domain.config import Config, default_config, load_config
from imagegw.domain.errors import ImageGatewayError

OK, WARN, FAIL = "OK", "WARN", "FAIL"
ROLES = ("all", "gateway", "worker")
#: Less free space than this on a directory the services write is worth a warning.
LOW_SPACE_BYTES = 2 * 1024**3
NETWORK_TIMEOUT = 5.0
_FS_TYPE_TIMEOUT = 10.0
_SSH_PROBE_IMAGE = "imagegw-doctor-probe.squashfs"
_SSH_PROBE_META = "imagegw-doctor-probe.meta"

__all__ = ["Account", "Finding", "add_arguments", "diagnose", "run"]


@dataclass(frozen=True)
class Finding:
    status: str
    what: str
    detail: str
    fix: str | None = None

    def line(self) -> str:
        text = f"{self.status:<4} {self.what}: {self.detail}"
        return f"{text}; fix: {self.fix}" if self.fix else text


@dataclass(frozen=True)
class Account:
    """The user the services run as; directories are checked for this user."""

    name: str
    uid: int
    groups: frozenset[int]

    @classmethod
    def named(cls, name: str | None) -> Account:
        """`name`'s account (KeyError if there is none), or this process's when None."""
        if name is None:
            try:
                entry = pwd.getpwuid(os.geteuid())
            except KeyError:  # a uid without a passwd entry (containers)
                return cls(str(os.geteuid()), os.geteuid(), frozenset(os.getgroups()))
        else:
            entry = pwd.getpwnam(name)
        groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem}
        return cls(entry.pw_name, entry.pw_uid, frozenset(groups))

    def can_write(self, directory: Path) -> bool:
        """May this user create files in `directory` (an existing directory)?"""
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return False
        if self.uid == os.geteuid():
            return os.access(directory, os.W_OK | os.X_OK)
        if self.uid == 0:
            return True
        return self.closed_parent(directory) is None and self._may(directory, stat.S_IWUSR | stat.S_IXUSR)

    def closed_parent(self, path: Path) -> Path | None:
        """The first directory above `path` this user cannot pass through, if any."""
        if self.uid == 0:
            return None
        if self.uid == os.geteuid():
            return next((parent for parent in reversed(path.parents)
                         if not os.access(parent, os.X_OK)), None)
        return next((parent for parent in reversed(path.parents)
                     if not self._may(parent, stat.S_IXUSR)), None)

    def _may(self, path: Path, owner_bits: int) -> bool:
        """The mode bits of `path` grant `owner_bits` (given as S_I?USR) to this user."""
        info = path.stat()
        if info.st_uid == self.uid:
            needed = owner_bits
        elif info.st_gid in self.groups:
            needed = owner_bits >> 3
        else:
            needed = owner_bits >> 6
        return info.st_mode & needed == needed


# -- the checks ---------------------------------------------------------------------------

def check_tools(role: str) -> Iterator[Finding]:
    worker = role in ("all", "worker")
    tools = (("tar2sqfs", FAIL, "every conversion", "squashfs-tools-ng", worker),
             ("unsquashfs", FAIL, "imports (gateway) and ready-made ORAS images (worker)",
              "squashfs-tools", True),
             ("sqfs2tar", WARN, "inspecting images", "squashfs-tools-ng", worker),
             ("rdsquashfs", WARN, "the gzip engine's probe", "squashfs-tools-ng", worker))
    for tool, missing_status, needed_for, package, needed in tools:
        if not needed:
            continue
        found = shutil.which(tool)
        if found:
            yield Finding(OK, f"tool {tool}", found)
        else:
            yield Finding(missing_status, f"tool {tool}", f"not on PATH (needed for {needed_for})",
                          f"install the Debian package {package}, or add its directory to the "
                          "service's PATH")


def check_listen(config: Config) -> Iterator[Finding]:
    from imagegw.gateway.app import check_listen_security
    from imagegw.rpc.server import is_loopback

    try:
        check_listen_security(config, config.listen)
    except ImageGatewayError as exc:
        yield Finding(FAIL, "ListenAddress", exc.message, exc.hint)
        return
    how = ("loopback only" if is_loopback(config.listen)
           else "TLS " + ("on" if config.tls_certificate else "off (AllowInsecureListen)"))
    yield Finding(OK, "ListenAddress", f"{config.listen}: {how}")


def check_shim(config: Config) -> Iterator[Finding]:
    from imagegw.pipeline import gzip_engine

    options = config.converter
    if options.compressor != "gzip":
        yield Finding(OK, "gzip engine", f"not used (ConverterOptions.compressor is {options.compressor})")
        return
    if options.gzip_engine == "zlib":
        yield Finding(OK, "gzip engine", "zlib, as ConverterOptions.gzipEngine says (the shim is not used)")
        return
    shim, problem = gzip_engine.usable_shim()
    if problem is None:
        yield Finding(OK, "gzip engine", f"libdeflate: {shim} passes the probe")
        return
    status = FAIL if options.gzip_engine == "libdeflate" else WARN
    yield Finding(status, "gzip engine",
                  f"the libdeflate shim is not usable ({problem}); "
                  + ("ConverterOptions.gzipEngine is \"libdeflate\"" if status == FAIL
                     else "tar2sqfs falls back to zlib, about 1.8x slower"),
                  gzip_engine.BUILD_HINT)


def check_allocator(config: Config) -> Iterator[Finding]:
    from imagegw.pipeline import writer_malloc

    if config.converter.writer_allocator == "glibc":
        yield Finding(OK, "tar2sqfs allocator", "glibc, as ConverterOptions.writerAllocator says")
        return
    library, problem = writer_malloc.usable_library()
    if problem is None:
        yield Finding(OK, "tar2sqfs allocator", f"jemalloc: {library} passes the probe")
        return
    status = FAIL if config.converter.writer_allocator == "jemalloc" else WARN
    yield Finding(status, "tar2sqfs allocator",
                  f"jemalloc is not usable ({problem}); "
                  + ("ConverterOptions.writerAllocator is \"jemalloc\"" if status == FAIL
                     else "tar2sqfs runs on glibc's malloc: the same image, with up to ~10 % "
                          "more CPU and memory on images of many small files"),
                  writer_malloc.INSTALL_HINT)


def directories(config: Config, role: str) -> dict[Path, list[str]]:
    """The directories the services of `role` write, each with the keys that name it."""
    named: list[tuple[str, str]] = []
    if role in ("all", "gateway"):
        named.append(("DataDirectory", config.data_dir))
    if role in ("all", "worker"):
        named += [("CacheDirectory", config.cache_dir), ("ExpandDirectory", config.expand_dir)]
    named += [(f"Platforms.{p.name}.local.imageDir", p.image_dir or "")
              for p in config.platforms.values() if p.access_type == "local"]
    found: dict[Path, list[str]] = {}
    for key, path in named:
        if path:
            found.setdefault(Path(path).absolute(), []).append(key)
    return found


def check_directories(config: Config, role: str, account: Account) -> Iterator[Finding]:
    for path, keys in directories(config, role).items():
        yield _check_directory(path, " = ".join(keys), account)


def _check_directory(path: Path, what: str, account: Account) -> Finding:
    make = f"install -d -o {account.name} -m 0755 {path}"
    if not path.exists():
        ancestor = next(parent for parent in path.parents if parent.exists())
        if ancestor.is_dir() and account.can_write(ancestor):
            return Finding(WARN, what, f"{path} does not exist; the service creates it "
                           f"(in {ancestor}: {_where(ancestor)})", f"create it now: {make}")
        return Finding(FAIL, what, f"{path} does not exist and {account.name} cannot create it "
                       f"in {ancestor}", make)
    if not path.is_dir():
        return Finding(FAIL, what, f"{path} is not a directory", f"remove it, then {make}")
    if not account.can_write(path):
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return Finding(FAIL, what, f"{path} is on a read-only file system ({_where(path)})",
                           "mount it read-write, or point the key at a writable directory")
        closed = account.closed_parent(path)
        if closed is not None:
            return Finding(FAIL, what, f"{account.name} cannot reach {path}: {closed} is mode "
                           f"{stat.S_IMODE(closed.stat().st_mode):04o}, owner {_owner(closed)}",
                           f"chmod o+x {closed} (or move the directory)")
        owner = _owner(path)
        return Finding(FAIL, what, f"{path} is not writable by {account.name} (owner {owner}, "
                       f"mode {stat.S_IMODE(path.stat().st_mode):04o})",
                       f"chown {account.name} {path} (or run the service as its owner)")
    free = _free_bytes(path)
    if free < LOW_SPACE_BYTES:
        return Finding(WARN, what, f"{path} writable by {account.name}, but {_where(path)}",
                       "free space there, or point the key at a larger file system")
    return Finding(OK, what, f"{path} writable by {account.name}, {_where(path)}")


def check_munge(config: Config) -> Iterator[Finding]:
    from imagegw.gateway.auth.munge import MungeDecoder, encode

    sockets: dict[str, list[str]] = {}
    for platform in config.platforms.values():
        if platform.munge_socket:
            sockets.setdefault(platform.munge_socket, []).append(platform.name)
    for socket, systems in sockets.items():
        what = f"MUNGE {socket} (systems {', '.join(systems)})"
        try:
            MungeDecoder(socket).decode(encode(b"imagegw doctor", socket_path=socket))
        except ImageGatewayError as exc:
            yield Finding(FAIL, what, f"no credential round trip: {exc.message}",
                          exc.hint or "start munged on this host with the cluster's key")
        else:
            yield Finding(OK, what, "munged answers (credential made and decoded)")


def check_ssh(config: Config) -> Iterator[Finding]:
    from imagegw.publish.ssh import SshPublisher

    remote = [name for name, platform in config.platforms.items()
              if platform.access_type == "remote" and platform.ssh is not None]
    if remote and shutil.which("ssh") is None:
        yield Finding(FAIL, f"OpenSSH client (systems {', '.join(remote)})",
                      "ssh is not installed: remote systems' images are published with it",
                      "install openssh-client")
    for platform in config.platforms.values():
        target = platform.ssh
        if platform.access_type != "remote" or target is None:
            continue
        with contextlib.suppress(OSError):
            if target.key and os.stat(target.key).st_mode & 0o077:
                yield Finding(FAIL, f"SSH {platform.name}: key {target.key}",
                              "others may read it, and ssh refuses such a key",
                              f"chmod 600 {target.key} (owned by the service account)")
        for host in target.hosts or ("(none)",):
            what = f"SSH {platform.name}: {target.username}@{host}"
            try:
                SshPublisher(replace(target, hosts=(host,) if target.hosts else ()),
                             stall_timeout=NETWORK_TIMEOUT).has_image(_SSH_PROBE_IMAGE, _SSH_PROBE_META)
            except ImageGatewayError as exc:
                yield Finding(FAIL, what, exc.message, exc.hint)
            else:
                yield Finding(OK, what, f"host key known ({target.known_hosts or '~/.ssh/known_hosts'}), "
                              f"login with {target.key} works, image directory {target.image_dir}")


def check_redis(config: Config) -> Iterator[Finding]:
    if not config.broker:
        return
    from imagegw.directory import redis_from_url

    where = _redacted(config.broker)
    try:
        client = redis_from_url(config.broker)
        client.ping()
        version = client.info("server").get("redis_version", "?")
    except ImageGatewayError as exc:
        yield Finding(FAIL, f"Redis {where}", exc.message, exc.hint)
        return
    except Exception as exc:  # noqa: BLE001 - redis raises many kinds; each is the answer
        yield Finding(FAIL, f"Redis {where}", f"no answer to PING: {exc}",
                      "start redis-server, or fix Broker (redis://[:PASSWORD@]HOST:PORT/DB)")
        return
    if urlsplit(config.broker).password is None and not config.broker.startswith("unix://"):
        yield Finding(WARN, f"Redis {where}", f"PING answered (Redis {version}) without a password",
                      "set requirepass (or an ACL user) and put it in Broker, and bind Redis to "
                      "localhost or the service hosts (docs/deployment.md)")
        return
    yield Finding(OK, f"Redis {where}", f"PING answered (Redis {version})")


def check_mongodb(config: Config) -> Iterator[Finding]:
    if not config.mongodb_uri:
        return
    import pymongo
    from pymongo.errors import PyMongoError

    where = _redacted(config.mongodb_uri)
    timeout_ms = int(NETWORK_TIMEOUT * 1000)
    try:
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            config.mongodb_uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
            socketTimeoutMS=timeout_ms)
        try:
            client.admin.command("ping")
        finally:
            client.close()
    except (PyMongoError, ValueError) as exc:
        yield Finding(FAIL, f"MongoDB {where}", f"no answer to ping: {_first_part(exc)}",
                      "start mongod (a replica set), or fix MongoDBURI")
        return
    yield Finding(OK, f"MongoDB {where}", f"ping answered (database {config.mongodb_name})")


def check_tls_files(config: Config, role: str) -> Iterator[Finding]:
    files: list[tuple[str, str]] = []
    if role in ("all", "gateway"):
        files += [("TLSCertificate", config.tls_certificate), ("TLSKey", config.tls_key),
                  ("TLSClientCA", config.tls_client_ca)]
    if config.worker_tls is not None:
        files += [("WorkerTLS.ca", config.worker_tls.ca),
                  ("WorkerTLS.certificate", config.worker_tls.certificate),
                  ("WorkerTLS.key", config.worker_tls.key)]
    for key, path in files:
        if not path:
            continue
        try:
            Path(path).read_bytes()
        except OSError as exc:
            yield Finding(FAIL, key, f"cannot read {path}: {exc.strerror}",
                          "the service account must read it (a key: 0640 root:imagegw, or 0600 owned by it)")
        else:
            yield Finding(OK, key, f"{path} readable")


def check_signature_policy(config: Config) -> Iterator[Finding]:
    """The signature policies and registries.d load, with their keys (docs/trust.md)."""
    from imagegw.signatures import load_site_trust

    if not config.signature_policy and not any(
            p.signature_policy for p in config.platforms.values()):
        return
    for tool in ("gpg", "gpgv"):
        if not shutil.which(tool):
            yield Finding(FAIL, f"tool {tool}", "not on PATH (needed for signedBy requirements "
                          "of the signature policy)", f"install the Debian package {tool}")
    try:
        trust = load_site_trust(config)
    except ImageGatewayError as exc:
        yield Finding(FAIL, "signature policy", str(exc),
                      "correct the file named (docs/trust.md), then restart the services")
        return
    for warning in trust.warnings:
        yield Finding(WARN, "signature policy", warning)
    for system, judged in sorted(trust.systems.items()):
        yield Finding(OK, f"signature policy of {system}",
                      f"{judged.policy.path} loaded ({judged.digest})")


# -- running them -------------------------------------------------------------------------

def diagnose(config: Config, *, role: str = "all", account: Account | None = None) -> list[Finding]:
    account = account or Account.named(None)
    worker, gateway = role in ("all", "worker"), role in ("all", "gateway")
    checks: list[tuple[str, Callable[[], Iterator[Finding]]]] = [
        ("tools", lambda: check_tools(role))]
    if worker:
        checks.append(("gzip engine", lambda: check_shim(config)))
        checks.append(("tar2sqfs allocator", lambda: check_allocator(config)))
    if gateway:
        checks.append(("ListenAddress", lambda: check_listen(config)))
    checks.append(("directories", lambda: check_directories(config, role, account)))
    if gateway:
        checks.append(("MUNGE", lambda: check_munge(config)))
    if worker:
        checks.append(("SSH", lambda: check_ssh(config)))
    checks.append(("Redis", lambda: check_redis(config)))
    if gateway:
        checks.append(("MongoDB", lambda: check_mongodb(config)))
    checks.append(("TLS files", lambda: check_tls_files(config, role)))
    checks.append(("signature policy", lambda: check_signature_policy(config)))
    findings: list[Finding] = []
    for name, check in checks:
        try:
            findings.extend(check())
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            findings.append(Finding(FAIL, name, f"the check itself failed: {exc!r}",
                                    "report this with the configuration (passwords removed)"))
    return findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="Shifter imagemanager.json (or IMAGEGW_CONFIG); "
                        "without one, the embedded default")
    parser.add_argument("--data-dir", help="data directory (or IMAGEGW_HOME)")
    parser.add_argument("--role", choices=ROLES, default="all",
                        help="check what a gateway, a worker, or both need on this host")
    parser.add_argument("--user", help="check directories for this account (default: the "
                        "current user; e.g. imagegw when run as root before starting the units)")


def run(args: argparse.Namespace) -> int:
    try:
        account = Account.named(args.user)
    except KeyError:
        print(f"imagegw doctor: no user named {args.user!r} on this host", file=sys.stderr)
        return 2
    findings = diagnose(_load(args), role=args.role, account=account)
    for finding in findings:
        print(finding.line(), flush=True)
    failed = sum(finding.status == FAIL for finding in findings)
    warned = sum(finding.status == WARN for finding in findings)
    print(f"{len(findings)} checks: {failed} failed, {warned} warnings")
    return 1 if failed else 0


def _load(args: argparse.Namespace) -> Config:
    data_dir = (args.data_dir or os.environ.get("IMAGEGW_HOME")
                or str(Path.home() / ".local" / "share" / "imagegw"))
    path = args.config or os.environ.get("IMAGEGW_CONFIG")
    if not path:
        return default_config(data_dir)
    config = load_config(path, data_dir=args.data_dir or None)
    return config if config.data_dir else load_config(path, data_dir=data_dir)


def _first_part(exc: Exception) -> str:
    """pymongo's message without the topology dump it appends."""
    return str(exc).split(" (configured timeouts", 1)[0].split(", Timeout:", 1)[0][:300]


def _where(path: Path) -> str:
    return f"on {_fs_type(path)}, {_free_bytes(path) / 1024**3:.1f} GiB free"


def _fs_type(path: Path) -> str:
    """The file system type's name as statfs(2) reports it (`stat -f`), e.g. ext2/ext3, nfs."""
    try:
        shown = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True,
                               text=True, timeout=_FS_TYPE_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"an unknown file system ({exc})"
    return shown.stdout.strip() or "an unknown file system"


def _free_bytes(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def _owner(path: Path) -> str:
    uid = path.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)
