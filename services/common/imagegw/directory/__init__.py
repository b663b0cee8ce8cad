"""The worker directory in Redis: which workers are alive, where, for which systems.

Workers `register` (and re-register as a heartbeat) with a time-to-live; the
gateway reads `live()` to send each job only to a worker that serves its system.
A worker that dies simply stops renewing and drops out after the TTL.
redis-py is imported by `_redis_module` when a Broker is used, not by importing this."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from imagegw.domain.errors import BackendUnavailable, ConfigError, WorkerUnavailable

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

SOCKET_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 5.0
PREFIX = "imagegw:worker"
MEMBERS = "imagegw:workers"
#: `WorkerTimeToLive`: a worker without a heartbeat for this long leaves the directory.
DEFAULT_TTL_SECONDS = 15.0


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    address: str
    systems: tuple[str, ...]
    slots: int
    started: float


#: `Broker` naming Redis Sentinels instead of one server (see `redis_from_url`).
SENTINEL_SCHEME = "redis+sentinel://"


def _redis_module() -> ModuleType:
    """redis-py, imported on first use (the one place that imports it): a process whose
    configuration has no Broker never loads it (~6 MiB of modules)."""
    try:
        import redis
        import redis.sentinel
    except ImportError as exc:
        raise ConfigError(f"Broker: the Redis client cannot be loaded: {exc}",
                          hint="install redis-py (pip install 'redis>=5,<9') or remove "
                          "Broker to queue in memory") from exc
    return redis


def redis_from_url(url: str) -> redis.Redis:
    """A Redis client with timeouts for `Broker`: redis://, rediss:// or unix:// for one
    server, or `redis+sentinel://[:password@]host:port[,host:port...]/master[/db]` for the
    primary the Sentinels name (redis-py's Sentinel client: it asks them again after a
    failover)."""
    if url.startswith(SENTINEL_SCHEME):
        return _sentinel_client(url)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"Broker: expected a redis:// URL, got {url.split('://')[0]}://...",
                          hint="other Celery brokers (amqp) are not supported; "
                          "remove Broker to queue in memory")
    try:
        return _redis_module().Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_SECONDS,
                                              socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
                                              health_check_interval=30)
    except ValueError as exc:
        raise ConfigError(f"Broker: not a usable Redis URL: {exc}") from exc


def _text(value: bytes | str) -> str:
    """A reply as text (bytes unless the client was made with decode_responses)."""
    return value.decode() if isinstance(value, bytes) else value
def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    """(sentinel addresses, master name, db, password) of a redis+sentinel:// URL."""
    rest = url.removeprefix(SENTINEL_SCHEME)
    netloc, _, path = rest.partition("/")
    password = None
    if "@" in netloc:
        credentials, _, netloc = netloc.rpartition("@")
        password = credentials.partition(":")[2] or None
    sentinels = []
    for entry in filter(None, netloc.split(",")):
        host, sep, port = entry.rpartition(":")
        if not sep or not port.isdigit():
            host, port = entry, "26379"
        sentinels.append((host.removeprefix("[").removesuffix("]"), int(port)))
    master, _, db = path.strip("/").partition("/")
    if not sentinels or not master or (db and not db.isdigit()):
        raise ConfigError(
            f"Broker: {url!r} is not a Sentinel URL",
            hint="redis+sentinel://host:26379,host:26380/mymaster (optionally /DB after "
            "the master name, :password@ before the hosts)")
    return sentinels, master, int(db or 0), password


def _sentinel_client(url: str) -> redis.Redis:
    sentinels, master, db, password = parse_sentinel_url(url)
    sentinel = _redis_module().sentinel.Sentinel(
        sentinels, socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        sentinel_kwargs={"socket_timeout": SOCKET_TIMEOUT_SECONDS,
                         "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS})
    return sentinel.master_for(master, db=db, password=password, health_check_interval=30)


class WorkerDirectory:
    def __init__(self, client: redis.Redis, *, ttl: float = DEFAULT_TTL_SECONDS) -> None:
        self._redis = client
        self._errors: type[Exception] = _redis_module().RedisError
        self.ttl = ttl

    def register(self, info: WorkerInfo) -> None:
        record = json.dumps({"address": info.address, "systems": list(info.systems),
                             "slots": info.slots, "started": info.started})
        try:
            pipe = self._redis.pipeline()
            pipe.set(f"{PREFIX}:{info.worker_id}", record, px=int(self.ttl * 1000))
            pipe.sadd(MEMBERS, info.worker_id)
            pipe.execute()
        except self._errors as exc:
            raise WorkerUnavailable(f"cannot register worker in Redis: {exc}") from exc

    def unregister(self, worker_id: str) -> None:
        try:
            self._redis.delete(f"{PREFIX}:{worker_id}")
            self._redis.srem(MEMBERS, worker_id)
        except self._errors as exc:
            log.warning("could not unregister worker %s: %s", worker_id, exc)

    def live(self) -> list[WorkerInfo]:
        try:
            ids = sorted(_text(member) for member in self._redis.smembers(MEMBERS))
            if not ids:
                return []
            records = self._redis.mget([f"{PREFIX}:{worker_id}" for worker_id in ids])
        except self._errors as exc:
            # The broker is away, not the workers: a job in hand is handed back, not failed.
            raise BackendUnavailable(f"cannot read the worker directory in Redis: {exc}",
                                     hint="check that Redis is running and Broker points "
                                     "at it") from exc
        workers, gone = [], []
        for worker_id, raw in zip(ids, records, strict=True):
            if raw is None:
                gone.append(worker_id)
                continue
            data = json.loads(raw)
            workers.append(WorkerInfo(worker_id, data["address"], tuple(data["systems"]),
                                      int(data["slots"]), float(data["started"])))
        if gone:
            self._redis.srem(MEMBERS, *gone)
        return workers

    def serving(self, system: str) -> list[WorkerInfo]:
        return [w for w in self.live() if system in w.systems]


class Registration:
    """Keeps one worker registered (heartbeat thread) until `stop()`."""

    def __init__(self, directory: WorkerDirectory, worker_id: str, address: str,
                 systems: Collection[str], slots: int) -> None:
        self.directory = directory
        self.info = WorkerInfo(worker_id, address, tuple(sorted(systems)), slots, time.time())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="registration", daemon=True)

    def start(self) -> None:
        self.directory.register(self.info)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.directory.unregister(self.info.worker_id)

    def _beat(self) -> None:
        while not self._stop.wait(self.directory.ttl / 3):
            try:
                self.directory.register(self.info)
            except WorkerUnavailable as exc:
                log.warning("%s", exc)
