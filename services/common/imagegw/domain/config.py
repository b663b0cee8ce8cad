"""Typed configuration, loaded once at start-up from Shifter's imagemanager.json.

`load_config(path)` accepts Shifter's JSON configuration unchanged and returns a
frozen `Config`. Unknown keys become warnings (`Config.warnings`); a wrong type or
value raises `ConfigError` naming the key. Nothing below `main` reads the
environment: overrides (listen address, data directory) come in as arguments.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imagegw.domain.errors import ConfigError
from imagegw.domain.runtimes import DEFAULT_RUNTIMES, RUNTIMES, SINGULARITY_COMPRESSORS, wants_sif

DOCKER_HUB_HOSTS = ("registry-1.docker.io", "docker.io", "index.docker.io")
DEFAULT_LISTEN = "127.0.0.1:7777"
#: Data the squashfs writer may hold queued for its compressor threads when the site does not
#: say (`ConverterOptions.queueBacklog`): tar2sqfs's own default, 10 blocks per thread, leaves
#: the threads waiting on each other (the small-files benchmark image: 15.3 s at 20 blocks,
#: 12.0 s at 200, the same image; tar2sqfs grew from 21 to 50 MB).
QUEUE_BACKLOG_BYTES = 24 << 20
MAX_QUEUE_BACKLOG = 65536
#: `ConverterOptions.gzipEngine` values.
GZIP_ENGINES = ("auto", "libdeflate", "zlib")
#: `ConverterOptions.writerAllocator` values.
WRITER_ALLOCATORS = ("auto", "jemalloc", "glibc")

# Keys Shifter's configuration may carry that we accept and do not use.
_IGNORED_TOP_KEYS = {
    "WorkerThreads", "DefaultLustreReplication", "DefaultOstCount", "Metrics",
    "LogLevel", "Debug", "Auth",
}


@dataclass(frozen=True)
class Location:
    """A registry location (`Locations.<name>`)."""

    name: str
    #: Base URL, e.g. "https://registry-1.docker.io"; plain http only when set so.
    url: str
    remotetype: str = "dockerv2"
    authentication: str = "http"
    #: A CA bundle for https, if the registry's certificate is not public.
    sslcacert: str | None = None


@dataclass(frozen=True)
class SshTarget:
    """Where a remote system's images go (`Platforms.<name>.ssh` and `host`)."""

    username: str
    key: str
    image_dir: str
    hosts: tuple[str, ...]
    port: int = 22
    known_hosts: str | None = None
    connect_timeout: float = 15.0


@dataclass(frozen=True)
class Platform:
    """A system (cluster) the gateway serves (`Platforms.<name>`)."""

    name: str
    access_type: str  # "local" or "remote"
    munge_socket: str | None = None
    admins: tuple[str, ...] = ()
    #: `local.imageDir` for local access.
    image_dir: str | None = None
    ssh: SshTarget | None = None
    #: Which manifest of a multi-platform image this system runs.
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""
    #: Whether callers without a credential may pull (public images only). Defaults to
    #: true only for a system without mungeSocketPath, where nobody can authenticate.
    allow_anonymous_pull: bool = True
    #: The container runtimes this system publishes for (imagegw.domain.runtimes).
    runtimes: tuple[str, ...] = DEFAULT_RUNTIMES
    #: `signaturePolicy`: a containers-policy.json(5) file replacing the global one here.
    signature_policy: str = ""


@dataclass(frozen=True)
class ConverterOptions:
    """Image builder settings; the site's choices are added to safe defaults."""

    compressor: str = "gzip"
    level: int | None = None
    block_size: int = 131072
    #: Extra arguments appended to the builder's command line.
    extra_args: tuple[str, ...] = ()
    #: Keep setuid/setgid bits (off: cleared, the runtime mounts nosuid anyway).
    keep_setuid: bool = False
    #: Number of compressor threads; 0 means all cores.
    jobs: int = 0
    #: Blocks tar2sqfs may queue for its compressor threads; 0 means QUEUE_BACKLOG_BYTES of
    #: blocks (at least 10 per thread). Like `jobs` it changes speed and memory, not the image.
    queue_backlog: int = 0
    #: Which deflate tar2sqfs's gzip compressor uses: "libdeflate" (about 1.8x faster at the
    #: same level, valid zlib streams like zlib's), "zlib" (tar2sqfs as built), or "auto":
    #: libdeflate when the worker's shim for it is installed and works, else zlib. The
    #: worker resolves "auto" once at start-up (`imagegw.pipeline.gzip_engine`).
    gzip_engine: str = "auto"
    #: The malloc tar2sqfs runs on: "jemalloc" (the same image; up to ~10 % less CPU and
    #: memory on images of many small files),
    #: "glibc" (tar2sqfs as it is), or "auto": jemalloc when it is installed and passes its
    #: probe, else glibc. Settled once at start-up (`imagegw.pipeline.writer_malloc`).
    writer_allocator: str = "auto"

    def blocks_queued(self, jobs: int) -> int:
        """The compressor queue's length in blocks, for `jobs` compressor threads."""
        if self.queue_backlog:
            return self.queue_backlog
        return max(10 * jobs, QUEUE_BACKLOG_BYTES // self.block_size)


@dataclass(frozen=True)
class Limits:
    """Caps that protect the worker from hostile or runaway images."""

    max_manifest_bytes: int = 4 * 1024 * 1024
    max_config_bytes: int = 8 * 1024 * 1024
    max_layer_bytes: int = 32 * 1024**3
    max_unpacked_bytes: int = 128 * 1024**3
    max_layers: int = 512
    http_timeout: float = 60.0
    http_retries: int = 4
    #: Fair share of the gateway (issue 18): open streams and calls in flight per caller
    #: (a MUNGE uid, or the peer host of anonymous calls) and for everyone together.
    max_streams_per_caller: int = 32
    max_calls_per_caller: int = 32
    max_streams_total: int = 1024
    max_calls_total: int = 256
    #: Threads the gateway's asynchronous server runs blocking work on (records, MUNGE);
    #: as many again for slow work (registry logins, imports).
    gateway_threads: int = 8


@dataclass(frozen=True)
class SharedConversions:
    """`SharedConversions`: a registry where converted images are shared as OCI artifacts."""

    #: The `Locations` key of the registry; pushes go only to a location the config names.
    registry: str
    repository: str = "imagegw/conversions"
    #: Publish our conversions there.
    push: bool = True
    #: Look there for a conversion before converting.
    pull: bool = True
    #: A Docker-style auth file (`{"auths": {"host:port": {"auth": base64}}}`) for the registry.
    auth_file: str | None = None


@dataclass(frozen=True)
class WorkerTls:
    """`WorkerTLS`: mutual TLS on the gateway-worker link. Each process's own
    certificate and key, and the CA both sides' certificates must be signed by."""

    ca: str
    certificate: str
    key: str


@dataclass(frozen=True)
class Config:
    default_image_location: str = "registry-1.docker.io"
    default_image_format: str = "squashfs"
    #: Seconds a READY image is served without asking the registry again.
    pull_update_timeout: float = 300.0
    #: Seconds after the last pull or lookup before an image expires.
    image_expiration_timeout: float = 90 * 86400.0
    mongodb_uri: str | None = None
    mongodb_name: str = "Shifter"
    broker: str | None = None
    cache_dir: str = ""
    expand_dir: str = ""
    #: Bytes the worker's caches (layers and converted images) may hold before the least
    #: recently used entries not in use are evicted (None: no limit).
    cache_max_bytes: int | None = None
    locations: Mapping[str, Location] = field(default_factory=dict)
    platforms: Mapping[str, Platform] = field(default_factory=dict)
    import_users: tuple[str, ...] = ()
    converter: ConverterOptions = field(default_factory=ConverterOptions)
    limits: Limits = field(default_factory=Limits)
    #: Where the embedded default keeps its SQLite file and default directories.
    data_dir: str = ""
    listen: str = DEFAULT_LISTEN
    #: Addresses of worker services the gateway dispatches to (empty: in-process worker).
    worker_addresses: tuple[str, ...] = ()
    #: How many jobs one worker runs at once.
    worker_slots: int = 2
    #: Pulls of distinct images one user may have in flight at once.
    max_concurrent_pulls_per_user: int = 10
    #: Seconds between auto-expiry runs; 0 means min(ImageExpirationTimeout / 10, 300).
    expiration_check_interval: float = 0.0
    #: Fernet key for registry credentials at rest ("" = <data dir>/credentials.key).
    credential_key_file: str = ""
    #: PEM server certificate chain and key for the gateway's gRPC port (TLS when both set).
    tls_certificate: str = ""
    tls_key: str = ""
    #: PEM CA bundle: when set, the gateway requires client certificates signed by it.
    tls_client_ca: str = ""
    #: Allow a non-loopback listen address without TLS and MUNGE on every system.
    allow_insecure_listen: bool = False
    #: Mutual TLS between gateways and workers (None: plaintext, for loopback/trusted nets).
    worker_tls: WorkerTls | None = None
    #: Converted images shared through a registry (None: not shared).
    shared_conversions: SharedConversions | None = None
    #: HOST:PORT of the gateway's and the worker's Prometheus endpoints (None: off).
    metrics_listen: str | None = None
    worker_metrics_listen: str | None = None
    #: `SignaturePolicy` (containers-policy.json(5)) and `SignatureRegistriesDir`
    #: (containers-registries.d(5)); unset: every image is accepted, as before.
    signature_policy: str = ""
    signature_registries_dir: str = ""
    #: Registry host patterns ("*.example.org", "ghcr.io", "host:5000") pulled from besides
    #: the Locations; they must resolve to public addresses (imagegw.registry.policy).
    allowed_registries: tuple[str, ...] = ()
    #: The secret gateways and workers share when WorkerTLS is not set
    #: ("" = <data dir>/worker.token, created 0600; imagegw.rpc.worker_auth).
    worker_token_file: str = ""
    #: Seconds between the gateway's sweeps that check every READY record's files
    #: (remote systems over SFTP) and retire records whose files are gone; 0: no sweep.
    file_check_interval: float = 600.0
    #: Seconds a gateway holds a job without renewing its lease before another takes it
    #: over, and seconds a worker stays in the directory without a heartbeat (it beats
    #: every third of that).
    job_lease_seconds: float = 30.0
    worker_ttl_seconds: float = 15.0
    #: HOST:PORT of the gateway's Shifter REST API (None: off).
    rest_listen: str | None = None
    #: Problems that did not stop loading (unknown keys, ignored settings).
    warnings: tuple[str, ...] = ()

    def platform(self, name: str) -> Platform:
        from imagegw.domain.errors import UnknownSystem

        try:
            return self.platforms[name]
        except KeyError:
            known = ", ".join(sorted(self.platforms)) or "none"
            raise UnknownSystem(
                f"unknown system {name!r}", hint=f"known systems: {known}"
            ) from None


def parse_duration(value: Any, key: str) -> float:
    """Shifter's "D:H:M:S" (fewer fields count from seconds up) or a number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected seconds or 'D:H:M:S', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return float(value)
    if isinstance(value, str):
        parts = value.strip().split(":")
        if not 1 <= len(parts) <= 4 or not all(p.strip().isdigit() for p in parts):
            raise ConfigError(f"{key}: expected 'D:H:M:S' like '90:00:00:00', got {value!r}")
        seconds = 0
        for unit, part in zip((1, 60, 3600, 86400), reversed(parts), strict=False):
            seconds += unit * int(part)
        return float(seconds)
    raise ConfigError(f"{key}: expected seconds or 'D:H:M:S', got {type(value).__name__}")


class _Reader:
    """Reads one JSON object, checking types and collecting unknown keys."""

    def __init__(self, data: Any, where: str, warnings: list[str]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where or 'configuration'}: expected an object")
        self.data = data
        self.where = where
        self.warnings = warnings
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.seen.add(name)
        if name not in self.data or self.data[name] is None:
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(f"{self.key(name)}: expected {_kind_names(kinds)}, got a boolean")
        if not isinstance(value, kinds):
            raise ConfigError(
                f"{self.key(name)}: expected {_kind_names(kinds)}, got {type(value).__name__}"
            )
        return value

    def sub(self, name: str) -> _Reader | None:
        value = self.get(name, dict)
        return None if value is None else _Reader(value, self.key(name), self.warnings)

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.get(name, (list, str), ())
        if isinstance(value, str):
            return (value,)
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.key(name)}: expected a list of strings")
        return tuple(value)

    def ignore(self, *names: str) -> None:
        self.seen.update(names)

    def finish(self) -> None:
        for name in self.data:
            if name not in self.seen:
                self.warnings.append(f"{self.key(name)}: unknown key, ignored")


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "a number",
             float: "a number", bool: "true or false"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def _location(name: str, reader: _Reader) -> Location:
    url = reader.get("url", str)
    if url is None:
        host = "registry-1.docker.io" if name in DOCKER_HUB_HOSTS else name
        url = f"https://{host}"
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{reader.key('url')}: must start with http:// or https://")
    remotetype = reader.get("remotetype", str, "dockerv2")
    if remotetype not in ("dockerv2", "dockerhub", "oras"):
        raise ConfigError(f"{reader.key('remotetype')}: expected dockerv2 or oras, got {remotetype!r}")
    location = Location(
        name=name,
        url=url.rstrip("/"),
        remotetype="dockerv2" if remotetype == "dockerhub" else remotetype,
        authentication=reader.get("authentication", str, "http"),
        sslcacert=reader.get("sslcacert", str),
    )
    reader.finish()
    return location


def _platform(name: str, reader: _Reader) -> Platform:
    access = reader.get("accesstype", str, "local")
    if access not in ("local", "remote"):
        raise ConfigError(f"{reader.key('accesstype')}: expected 'local' or 'remote', got {access!r}")
    admins = reader.strings("admins")
    image_dir = None
    local = reader.sub("local")
    if local is not None:
        image_dir = local.get("imageDir", str)
        local.finish()
    ssh = None
    hosts = reader.strings("host")
    ssh_reader = reader.sub("ssh")
    if ssh_reader is not None:
        ssh = SshTarget(
            username=ssh_reader.get("username", str, ""),
            key=ssh_reader.get("key", str, ""),
            image_dir=ssh_reader.get("imageDir", str, ""),
            hosts=hosts,
            port=ssh_reader.get("port", int, 22),
            known_hosts=ssh_reader.get("knownHosts", str),
            connect_timeout=float(ssh_reader.get("connectTimeout", (int, float), 15.0)),
        )
        ssh_reader.finish()
    if access == "local" and not image_dir:
        raise ConfigError(f"{reader.key('local.imageDir')}: required when accesstype is local")
    if access == "remote":
        if ssh is None or not ssh.image_dir or not ssh.username:
            raise ConfigError(
                f"{reader.key('ssh')}: username and imageDir are required when accesstype is remote"
            )
        if not hosts:
            raise ConfigError(f"{reader.key('host')}: at least one host is required for remote")
    reader.ignore("usergroupService")
    munge_socket = reader.get("mungeSocketPath", str)
    platform = Platform(
        name=name,
        access_type=access,
        munge_socket=munge_socket,
        admins=admins,
        image_dir=image_dir,
        ssh=ssh,
        os=reader.get("os", str, "linux"),
        architecture=reader.get("architecture", str, "amd64"),
        variant=reader.get("variant", str, ""),
        allow_anonymous_pull=reader.get("allowAnonymousPull", bool, not munge_socket),
        runtimes=_runtimes(reader),
        signature_policy=reader.get("signaturePolicy", str, ""),
    )
    reader.finish()
    return platform


def _runtimes(reader: _Reader) -> tuple[str, ...]:
    runtimes = reader.strings("runtimes") if "runtimes" in reader.data else DEFAULT_RUNTIMES
    unknown = [name for name in runtimes if name not in RUNTIMES]
    if unknown or not runtimes:
        raise ConfigError(f"{reader.key('runtimes')}: a list of {', '.join(RUNTIMES)}, "
                          f"not {list(runtimes)!r}")
    return tuple(dict.fromkeys(runtimes))


def _check_runtime_compressor(platforms: Mapping[str, Platform],
                              converter: ConverterOptions) -> None:
    """SingularityCE cannot mount zstd squashfs: such a system needs another compressor."""
    if converter.compressor in SINGULARITY_COMPRESSORS:
        return
    for platform in platforms.values():
        if wants_sif(platform.runtimes):
            raise ConfigError(
                f"ConverterOptions.compressor: {converter.compressor!r} cannot be mounted by "
                f"SingularityCE, and Platforms.{platform.name}.runtimes publishes for "
                f"{', '.join(platform.runtimes)}",
                hint="use \"compressor\": \"gzip\" (or xz, lz4, lzo), or publish for "
                     "shifter and enroot only")


def _converter(reader: _Reader | None) -> ConverterOptions:
    if reader is None:
        return ConverterOptions()
    extra = reader.strings("extraArgs")
    options = ConverterOptions(
        compressor=reader.get("compressor", str, "gzip"),
        level=reader.get("level", int),
        block_size=reader.get("blockSize", int, 131072),
        extra_args=extra,
        keep_setuid=reader.get("keepSetuid", bool, False),
        jobs=reader.get("jobs", int, 0),
        queue_backlog=reader.get("queueBacklog", int, 0),
        gzip_engine=reader.get("gzipEngine", str, "auto"),
        writer_allocator=reader.get("writerAllocator", str, "auto"),
    )
    if options.compressor not in ("gzip", "xz", "lzo", "lz4", "zstd", "lzma"):
        raise ConfigError(f"{reader.key('compressor')}: unsupported compressor {options.compressor!r}")
    if options.gzip_engine not in GZIP_ENGINES:
        raise ConfigError(f"{reader.key('gzipEngine')}: one of {', '.join(GZIP_ENGINES)}, "
                          f"not {options.gzip_engine!r}")
    if options.writer_allocator not in WRITER_ALLOCATORS:
        raise ConfigError(f"{reader.key('writerAllocator')}: one of {', '.join(WRITER_ALLOCATORS)}, "
                          f"not {options.writer_allocator!r}")
    if options.block_size & (options.block_size - 1) or not 4096 <= options.block_size <= 1 << 20:
        raise ConfigError(f"{reader.key('blockSize')}: a power of two from 4096 to 1048576")
    if options.jobs < 0:
        raise ConfigError(f"{reader.key('jobs')}: a number of threads, 0 for all cores")
    if not 0 <= options.queue_backlog <= MAX_QUEUE_BACKLOG:
        raise ConfigError(f"{reader.key('queueBacklog')}: a number of blocks from 1 to "
                          f"{MAX_QUEUE_BACKLOG}, or 0 for {QUEUE_BACKLOG_BYTES >> 20} MiB of blocks")
    reader.finish()
    return options


def _limits(reader: _Reader | None) -> Limits:
    if reader is None:
        return Limits()
    base = Limits()
    limits = Limits(
        max_manifest_bytes=reader.get("maxManifestBytes", int, base.max_manifest_bytes),
        max_config_bytes=reader.get("maxConfigBytes", int, base.max_config_bytes),
        max_layer_bytes=reader.get("maxLayerBytes", int, base.max_layer_bytes),
        max_unpacked_bytes=reader.get("maxUnpackedBytes", int, base.max_unpacked_bytes),
        max_layers=reader.get("maxLayers", int, base.max_layers),
        http_timeout=float(reader.get("httpTimeout", (int, float), base.http_timeout)),
        http_retries=reader.get("httpRetries", int, base.http_retries),
        max_streams_per_caller=reader.get("maxStreamsPerCaller", int,
                                          base.max_streams_per_caller),
        max_calls_per_caller=reader.get("maxCallsPerCaller", int, base.max_calls_per_caller),
        max_streams_total=reader.get("maxStreamsTotal", int, base.max_streams_total),
        max_calls_total=reader.get("maxCallsTotal", int, base.max_calls_total),
        gateway_threads=reader.get("gatewayThreads", int, base.gateway_threads),
    )
    for key in ("maxStreamsPerCaller", "maxCallsPerCaller", "maxStreamsTotal",
                "maxCallsTotal", "gatewayThreads"):
        if reader.get(key, int, 1) < 1:
            raise ConfigError(f"{reader.key(key)}: must be at least 1")
    reader.finish()
    return limits


_NAME_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*$")


def _shared_conversions(
    reader: _Reader | None, locations: Mapping[str, Location]
) -> SharedConversions | None:
    if reader is None:
        return None
    registry = reader.get("registry", str)
    if not registry:
        raise ConfigError(f"{reader.key('registry')}: required (a key of Locations)")
    if registry not in locations:
        known = ", ".join(sorted(locations)) or "none"
        raise ConfigError(f"{reader.key('registry')}: {registry!r} is not a key of Locations "
                          f"(known: {known})")
    repository = reader.get("repository", str, "imagegw/conversions")
    if not _REPOSITORY.match(repository) or len(repository) > 255:
        raise ConfigError(f"{reader.key('repository')}: not a valid repository name "
                          f"{repository!r} (lowercase path like 'imagegw/conversions')")
    shared = SharedConversions(
        registry=registry,
        repository=repository,
        push=reader.get("push", bool, True),
        pull=reader.get("pull", bool, True),
        auth_file=reader.get("authFile", str),
    )
    reader.finish()
    return shared


def parse_host_port(address: str, key: str) -> tuple[str, int]:
    """"HOST:PORT" (IPv6 as "[::1]:PORT", port 0 for any free port) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key}: expected HOST:PORT like 127.0.0.1:9464, got {address!r}")
    return host, int(port)


def _host_port(address: str | None, key: str) -> str | None:
    if address:
        parse_host_port(address, key)
    return address or None


def _worker_tls(reader: _Reader | None) -> WorkerTls | None:
    if reader is None:
        return None
    values = {name: reader.get(name, str, "") for name in ("ca", "certificate", "key")}
    reader.finish()
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise ConfigError(f"WorkerTLS: {', '.join(missing)} missing",
                          hint="set ca, certificate and key (PEM files), or remove WorkerTLS")
    return WorkerTls(**values)


def _trust_settings(top: _Reader) -> dict[str, Any]:
    """Users-and-trust keys: per-user limits, expiry schedule, credential key, TLS."""
    settings: dict[str, Any] = {
        "max_concurrent_pulls_per_user": top.get("MaxConcurrentPullsPerUser", int, 10),
        "expiration_check_interval": float(top.get("ExpirationCheckInterval", (int, float), 0)),
        "credential_key_file": top.get("CredentialKeyFile", str, ""),
        "tls_certificate": top.get("TLSCertificate", str, ""),
        "tls_key": top.get("TLSKey", str, ""),
        "tls_client_ca": top.get("TLSClientCA", str, ""),
        "allow_insecure_listen": top.get("AllowInsecureListen", bool, False),
    }
    if settings["max_concurrent_pulls_per_user"] < 1:
        raise ConfigError("MaxConcurrentPullsPerUser: must be at least 1")
    if settings["expiration_check_interval"] < 0:
        raise ConfigError("ExpirationCheckInterval: must not be negative")
    if bool(settings["tls_certificate"]) != bool(settings["tls_key"]):
        raise ConfigError("TLSCertificate, TLSKey: set both or neither")
    if settings["tls_client_ca"] and not settings["tls_certificate"]:
        raise ConfigError("TLSClientCA: needs TLSCertificate and TLSKey too")
    return settings


def parse_config(
    data: Any, *, data_dir: str | None = None, listen: str | None = None
) -> Config:
    """Builds a Config from the decoded JSON; overrides win over the file."""
    warnings: list[str] = []
    top = _Reader(data, "", warnings)
    locations = {}
    loc_reader = top.sub("Locations")
    if loc_reader is not None:
        for name in loc_reader.data:
            sub = loc_reader.sub(name)
            assert sub is not None
            locations[name] = _location(name, sub)
    platforms = {}
    plat_reader = top.sub("Platforms")
    if plat_reader is not None:
        for name in plat_reader.data:
            sub = plat_reader.sub(name)
            assert sub is not None
            platforms[name] = _platform(name, sub)
    default_location = top.get("DefaultImageLocation", str, "registry-1.docker.io")
    if default_location not in locations:
        locations[default_location] = Location(
            name=default_location,
            url="https://registry-1.docker.io"
            if default_location in DOCKER_HUB_HOSTS
            else f"https://{default_location}",
        )
    resolved_data_dir = data_dir or top.get("DataDirectory", str) or ""
    image_format = top.get("DefaultImageFormat", str, "squashfs")
    if image_format not in ("squashfs", "ext4"):
        raise ConfigError(f"DefaultImageFormat: expected 'squashfs' or 'ext4', got {image_format!r}")
    records = _record_settings(top)
    config = Config(
        default_image_location=default_location,
        default_image_format=image_format,
        pull_update_timeout=parse_duration(top.get("PullUpdateTimeout", (int, float, str), 300),
                                           "PullUpdateTimeout"),
        image_expiration_timeout=parse_duration(
            top.get("ImageExpirationTimeout", (int, float, str), "90:00:00:00"),
            "ImageExpirationTimeout"),
        mongodb_uri=top.get("MongoDBURI", str),
        mongodb_name=top.get("MongoDB", str, "Shifter"),
        broker=top.get("Broker", str),
        cache_dir=top.get("CacheDirectory", str, ""),
        expand_dir=top.get("ExpandDirectory", str, ""),
        cache_max_bytes=_cache_max_bytes(top.get("CacheMaxBytes", int)),
        locations=locations,
        platforms=platforms,
        import_users=top.strings("ImportUsers"),
        converter=_converter(top.sub("ConverterOptions")),
        limits=_limits(top.sub("Limits")),
        data_dir=resolved_data_dir,
        listen=listen or top.get("ListenAddress", str, DEFAULT_LISTEN),
        worker_addresses=top.strings("WorkerAddresses"),
        worker_slots=top.get("WorkerSlots", int, 2),
        **_trust_settings(top),
        shared_conversions=_shared_conversions(top.sub("SharedConversions"), locations),
        worker_tls=_worker_tls(top.sub("WorkerTLS")),
        metrics_listen=_host_port(top.get("MetricsListen", str), "MetricsListen"),
        worker_metrics_listen=_host_port(top.get("WorkerMetricsListen", str), "WorkerMetricsListen"),
        signature_policy=top.get("SignaturePolicy", str, ""),
        signature_registries_dir=top.get("SignatureRegistriesDir", str, ""),
        allowed_registries=_allowed_registries(top.strings("AllowedRegistries")),
        worker_token_file=top.get("WorkerTokenFile", str, ""),
        file_check_interval=records["file_check_interval"],
        job_lease_seconds=records["job_lease_seconds"],
        worker_ttl_seconds=records["worker_ttl_seconds"],
        rest_listen=_host_port(top.get("RestListen", str), "RestListen"),
    )
    top.ignore(*_IGNORED_TOP_KEYS, "DataDirectory")
    top.finish()
    _check_runtime_compressor(config.platforms, config.converter)
    config = _with_directories(config)
    return replace(config, warnings=tuple(warnings))


_REGISTRY_PATTERN = re.compile(
    r"^(?:[a-z0-9*?](?:[a-z0-9*?.-]*[a-z0-9*?])?|\[[0-9a-f:.]+\])(?::(?:[0-9]{1,5}|\*))?$")


def _allowed_registries(patterns: tuple[str, ...]) -> tuple[str, ...]:
    for pattern in patterns:
        port = pattern.rpartition("]")[2].partition(":")[2]
        if not _REGISTRY_PATTERN.match(pattern.lower()) or (
                port.isdigit() and not 0 < int(port) < 65536):
            raise ConfigError(f"AllowedRegistries: {pattern!r} is not a host pattern",
                              hint='a host with * wildcards and an optional port (or :* for '
                                   'any), like "*.example.org" or "registry.example.org:5000"')
    return tuple(pattern.lower() for pattern in patterns)


def _record_settings(top: _Reader) -> dict[str, float]:
    """The file sweep's schedule and the broker's lease and heartbeat times."""
    settings = {
        "file_check_interval": float(top.get("FileCheckInterval", (int, float), 600)),
        "job_lease_seconds": float(top.get("JobLeaseSeconds", (int, float), 30)),
        "worker_ttl_seconds": float(top.get("WorkerTimeToLive", (int, float), 15)),
    }
    if settings["file_check_interval"] < 0:
        raise ConfigError("FileCheckInterval: must not be negative (0 turns the sweep off)")
    for key, name in (("job_lease_seconds", "JobLeaseSeconds"),
                      ("worker_ttl_seconds", "WorkerTimeToLive")):
        if not 1 <= settings[key] <= 3600:
            raise ConfigError(f"{name}: seconds from 1 to 3600, got {settings[key]:g}")
    return settings


def _cache_max_bytes(value: int | None) -> int | None:
    if value is not None and value < 0:
        raise ConfigError("CacheMaxBytes: must not be negative (leave it out for no limit)")
    return value


def _with_directories(config: Config) -> Config:
    """Fills cache/expand directories from the data directory when unset."""
    if not config.data_dir:
        return config
    data = Path(config.data_dir)
    return replace(
        config,
        cache_dir=config.cache_dir or str(data / "cache"),
        expand_dir=config.expand_dir or str(data / "expand"),
    )


def load_config(
    path: str | os.PathLike[str], *, data_dir: str | None = None, listen: str | None = None
) -> Config:
    """Loads and validates a JSON configuration file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON at line {exc.lineno}: {exc.msg}") from exc
    return parse_config(data, data_dir=data_dir, listen=listen)


def default_config(data_dir: str, *, listen: str | None = None) -> Config:
    """The embedded default: one local system "default" under the data directory."""
    data = Path(data_dir)
    return parse_config(
        {
            "DefaultImageLocation": "registry-1.docker.io",
            "DefaultImageFormat": "squashfs",
            "PullUpdateTimeout": 300,
            "ImageExpirationTimeout": "90:00:00:00",
            "Locations": {"registry-1.docker.io": {"remotetype": "dockerv2"}},
            "Platforms": {
                "default": {"accesstype": "local", "admins": ["root"],
                            "local": {"imageDir": str(data / "images")}},
            },
        },
        data_dir=data_dir,
        listen=listen,
    )
