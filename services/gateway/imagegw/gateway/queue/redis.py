"""The Redis job queue and progress hub, shared by several gateways and workers.

Jobs: one stream per system (`<stream>:<system>`) read through one consumer group;
the set `<stream>` names the systems, the counter `<stream>#seq` orders jobs across
them, and a lease is a pending entry's idle time.
Progress: pub/sub channels `<prefix>:<channel>`, read by one thread per hub for all its
subscriptions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any, TypeVar

import redis

from imagegw.gateway.queue.base import Claim, JobSpec, ProgressEvent, QueuedJob, QueueUnavailable
from imagegw.gateway.queue.buffer import DEFAULT_BUFFER_SIZE, BufferedSubscription

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The pseudo consumer that holds released jobs until someone claims them.
RELEASED_CONSUMER = "imagegw:released"
#: Idle time given to released jobs: far past any lease, so they are claimable at once
#: (and below the epoch in milliseconds, which Redis would clamp to zero).
_RELEASED_IDLE_MS = 10**11
DEFAULT_POLL_SECONDS = 0.5
SUBSCRIBE_TIMEOUT_SECONDS = 10.0
#: The progress reader waits this long after a lost connection, doubling up to the max.
RECONNECT_MIN_SECONDS = 0.2
RECONNECT_MAX_SECONDS = 2.0

# Adds a job with a queue-wide sequence number: FIFO order across the systems' streams.
_SUBMIT = """
local seq = redis.call('INCR', KEYS[1])
redis.call('SADD', KEYS[2], ARGV[1])
return redis.call('XADD', KEYS[3], '*', 'job_id', ARGV[2], 'system', ARGV[1],
                  'payload', ARGV[3], 'seq', seq)
"""

# Acts on a pending entry only if `consumer` still holds it at `attempt`:
# a stale claim (the job was re-claimed since) changes nothing.
_HELD_ACTION = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] or tonumber(p[1][4]) ~= tonumber(ARGV[4]) then
  return 0
end
if ARGV[5] == 'extend' then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
elseif ARGV[5] == 'ack' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
else
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[6], 0, ARGV[2], 'IDLE', ARGV[7], 'JUSTID')
end
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _submit_order(fields: Any) -> int:
    """The queue-wide sequence number a job was submitted with (`fields`: an entry's
    fields as redis-py returns them, bytes or str keys; its reply types are loose)."""
    return int(fields.get(b"seq", fields.get("seq", 0)))


@contextlib.contextmanager
def _redis_errors(action: str) -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise QueueUnavailable(
            f"the Redis broker failed to {action}: {exc}",
            hint="check that Redis is running and Broker points at it",
        ) from exc


class RedisJobQueue:
    """JobQueue on Redis Streams; safe to share between threads."""

    def __init__(self, redis_client: redis.Redis, *, stream: str = "imagegw:jobs",
                 group: str = "workers", lease_seconds: float = 30.0,
                 poll_seconds: float = DEFAULT_POLL_SECONDS) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        self._redis = redis_client
        self.stream = stream
        self.group = group
        self.lease_seconds = lease_seconds
        # Blocking reads wake this often to pick up expired and released jobs.
        self._poll = min(poll_seconds, lease_seconds / 2)
        self._groups: set[str] = set()
        self._submit = redis_client.register_script(_SUBMIT)
        self._held_action = redis_client.register_script(_HELD_ACTION)

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self.lease_seconds * 1000))

    def _stream(self, system: str) -> str:
        return f"{self.stream}:{system}"

    def _ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            self._redis.xgroup_create(stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    def _run(self, action: str, operation: Callable[[], T]) -> T:
        """Runs `operation` with redis errors translated. When the server lost the
        consumer groups (a restart without persistence), recreates them and runs it again."""
        with _redis_errors(action):
            try:
                return operation()
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("Redis lost the job queue's consumer groups (restarted?): "
                            "recreating them")
                self._groups.clear()
                return operation()

    # -- producers --------------------------------------------------------------------

    def submit(self, job: QueuedJob) -> None:
        stream = self._stream(job.system)

        def add() -> None:
            self._ensure_group(stream)
            self._submit(keys=[f"{self.stream}#seq", self.stream, stream],
                         args=[job.system, job.job_id, json.dumps(job.spec.to_json())])

        self._run("queue a job", add)

    # -- consumers --------------------------------------------------------------------

    def claim(self, consumer: str, systems: Collection[str] | None,
              timeout: float) -> Claim | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            remaining = deadline - time.monotonic()
            block = min(remaining, self._poll) if remaining > 0 else None
            streams = self._run("list the job streams", lambda: self._streams(systems))
            if streams:
                found = self._run("hand out a job",
                                  functools.partial(self._claim_from, consumer, streams, block))
                if found is not None:
                    return found
            elif block is not None:
                time.sleep(block)
            if time.monotonic() >= deadline:
                return None

    def _claim_from(self, consumer: str, streams: list[str],
                    block: float | None) -> Claim | None:
        """An expired or released job first (they are older), else a new one."""
        for stream in streams:
            self._ensure_group(stream)
        found = self._claim_expired(consumer, streams)
        return found if found is not None else self._read_new(consumer, streams, block)

    def _streams(self, systems: Collection[str] | None) -> list[str]:
        names = (sorted(_text(s) for s in self._redis.smembers(self.stream))
                 if systems is None else sorted(systems))
        return [self._stream(name) for name in names]

    def _claim_expired(self, consumer: str, streams: list[str]) -> Claim | None:
        for stream in streams:
            start = "0-0"
            while True:
                # XAUTOCLAIM scans a bounded part of the pending list per call: page on.
                reply = self._redis.xautoclaim(stream, self.group, consumer,
                                               min_idle_time=self._lease_ms,
                                               start_id=start, count=1)
                next_start, entries = _text(reply[0]), reply[1]
                entries = [e for e in entries if e and e[1]]
                if entries:
                    entry_id, fields = entries[0]
                    return self._claim_of(stream, consumer, _text(entry_id), fields)
                if next_start == "0-0":
                    break
                start = next_start
        return None

    def _read_new(self, consumer: str, streams: list[str], block: float | None) -> Claim | None:
        block_ms = None if block is None else max(1, int(block * 1000))
        reply = self._redis.xreadgroup(self.group, consumer, dict.fromkeys(streams, ">"),
                                       count=1, block=block_ms)
        items = list(reply.items()) if isinstance(reply, dict) else list(reply or [])
        got = [(_text(stream), _text(e[0][0]), e[0][1]) for stream, e in items if e]
        if not got:
            return None
        got.sort(key=lambda g: _submit_order(g[2]))
        (_, entry_id, fields), extras = got[0], got[1:]
        for extra_stream, extra_id, _ in extras:
            # XREADGROUP over several streams returns one entry of each: hand the
            # others back unused (delivery count reset, so nobody sees an attempt).
            self._redis.xclaim(extra_stream, self.group, RELEASED_CONSUMER, 0, [extra_id],
                               idle=_RELEASED_IDLE_MS, retrycount=0, justid=True)
        return Claim(self._job(fields), consumer, 1, entry_id)

    def _claim_of(self, stream: str, consumer: str, entry_id: str, fields: Any) -> Claim:
        info = self._redis.xpending_range(stream, self.group, min=entry_id, max=entry_id,
                                          count=1)
        attempt = int(info[0]["times_delivered"]) if info else 1
        return Claim(self._job(fields), consumer, attempt, entry_id)

    @staticmethod
    def _job(fields: Any) -> QueuedJob:
        text = {_text(k): _text(v) for k, v in fields.items()}
        return QueuedJob(text["job_id"], text["system"],
                         JobSpec.from_json(json.loads(text["payload"])))

    def _act(self, claim: Claim, action: str) -> bool:
        args: list[str | int] = [self.group, claim.token, claim.consumer, claim.attempt, action,
                RELEASED_CONSUMER, _RELEASED_IDLE_MS]
        done = self._run(f"{action} a job", lambda: self._held_action(
            keys=[self._stream(claim.job.system)], args=args))
        return bool(done)

    def extend(self, claim: Claim) -> bool:
        return self._act(claim, "extend")

    def ack(self, claim: Claim) -> None:
        self._act(claim, "ack")

    def release(self, claim: Claim) -> None:
        self._act(claim, "release")

    # -- inspection and lifetime ------------------------------------------------------

    def pending(self) -> list[tuple[QueuedJob, str | None, int]]:
        rows = self._run("list jobs", self._pending_rows)
        rows.sort(key=lambda r: r[0])
        return [(job, consumer, attempt) for _, job, consumer, attempt in rows]

    def _pending_rows(self) -> list[tuple[int, QueuedJob, str | None, int]]:
        rows: list[tuple[int, QueuedJob, str | None, int]] = []
        for stream in self._streams(None):
            self._ensure_group(stream)
            held = {
                _text(p["message_id"]): (_text(p["consumer"]), int(p["times_delivered"]))
                for p in self._redis.xpending_range(stream, self.group, "-", "+",
                                                    count=1_000_000)
            }
            for entry_id, fields in self._redis.xrange(stream) or []:
                consumer, attempt = held.get(_text(entry_id), (None, 0))
                if consumer == RELEASED_CONSUMER:
                    consumer = None
                rows.append((_submit_order(fields), self._job(fields), consumer, attempt))
        return rows

    def close(self) -> None:
        """Closes the client (the queue owns it); queued jobs stay in Redis."""
        self._redis.close()


class RedisSubscription(BufferedSubscription):
    """One subscriber's events, delivered by its hub's reader into a bounded buffer."""


class RedisProgressHub:
    """ProgressHub on Redis pub/sub; publishers and subscribers may be in other processes.

    One connection and one reader thread serve every subscription of the hub (a channel
    with several subscribers is subscribed to once), so watchers cost no thread each.
    Only the reader touches the pub/sub connection; `subscribe` hands it the channel and
    waits until Redis has confirmed it, so every later publication reaches the subscriber.

    Subscriptions outlive a lost connection (Redis restarting, a Sentinel failover): the
    reader connects again and subscribes every channel again; events published meanwhile
    are lost (watchers read the records when no event comes). While Redis is away,
    `subscribe` returns at once with a subscription that starts receiving once it is back."""

    def __init__(self, redis_client: redis.Redis, *, prefix: str = "imagegw:progress",
                 buffer_size: int = DEFAULT_BUFFER_SIZE) -> None:
        self._redis = redis_client
        self.prefix = prefix
        self.buffer_size = buffer_size
        self._lock = threading.Lock()
        self._subscribers: dict[str, list[RedisSubscription]] = {}
        self._confirmed: set[str] = set()
        self._pending: dict[str, threading.Event] = {}
        self._commands: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        #: False from a lost connection until Redis confirms a subscription again.
        self._connected = True

    def publish(self, channel: str, event: ProgressEvent) -> None:
        text = json.dumps(event.to_json())
        with _redis_errors("publish progress"):
            self._redis.publish(f"{self.prefix}:{channel}", text)

    def subscribe(self, channel: str) -> RedisSubscription:
        name = f"{self.prefix}:{channel}"
        subscription = RedisSubscription(name, self.buffer_size, self._unsubscribe)
        with self._lock:
            if self._reader is None:
                self._reader = threading.Thread(target=self._read, name="progress-reader",
                                                daemon=True)
                self._reader.start()
            self._subscribers.setdefault(name, []).append(subscription)
            if name in self._confirmed:
                return subscription
            confirmed = self._pending.get(name)
            if confirmed is None:
                confirmed = self._pending[name] = threading.Event()
                self._commands.put(("subscribe", name))
            if not self._connected:
                return subscription  # subscribed again with the others once Redis is back
        confirmed.wait(SUBSCRIBE_TIMEOUT_SECONDS)
        with self._lock:
            ok = name in self._confirmed or not self._connected
        if not ok:
            subscription.close()
            raise QueueUnavailable(f"Redis did not confirm the subscription to {name}")
        return subscription

    def _unsubscribe(self, subscription: BufferedSubscription) -> None:
        with self._lock:
            subscribers = self._subscribers.get(subscription.channel, [])
            if subscription in subscribers:
                subscribers.remove(subscription)
            if not subscribers and self._subscribers.pop(subscription.channel, None) is not None:
                self._confirmed.discard(subscription.channel)
                self._commands.put(("unsubscribe", subscription.channel))

    def _read(self) -> None:
        pubsub = self._redis.pubsub()
        backoff = RECONNECT_MIN_SECONDS
        while not self._stop.is_set():
            try:
                self._send_commands(pubsub)
                message = pubsub.get_message(timeout=0.05)
            except redis.RedisError as exc:
                self._interrupted(exc)
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()
                pubsub = self._redis.pubsub()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_SECONDS)
                continue
            backoff = RECONNECT_MIN_SECONDS
            if message is not None:
                self._dispatch(message)
        with contextlib.suppress(redis.RedisError):
            pubsub.close()

    def _send_commands(self, pubsub: Any) -> None:
        while True:
            try:
                command, name = self._commands.get_nowait()
            except queue.Empty:
                return
            if command == "subscribe":
                pubsub.subscribe(name)
            else:
                pubsub.unsubscribe(name)

    def _interrupted(self, exc: redis.RedisError) -> None:
        """The connection is lost: every channel is subscribed again on the next one;
        `subscribe` calls waiting for a confirmation return (see the class docstring)."""
        with self._lock:
            if self._connected:
                log.warning("progress subscriptions interrupted (%s): subscribing again "
                            "once Redis is back; watchers read the records meanwhile", exc)
            self._connected = False
            self._confirmed.clear()
            pending = list(self._pending.values())
            self._pending.clear()
            while True:  # what was not sent is sent again below, for every channel
                try:
                    self._commands.get_nowait()
                except queue.Empty:
                    break
            for name in self._subscribers:
                self._commands.put(("subscribe", name))
        for confirmed in pending:
            confirmed.set()

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = _text(message["type"])
        name = _text(message.get("channel", ""))
        if kind == "subscribe":
            with self._lock:
                confirmed = self._pending.pop(name, None)
                if name in self._subscribers:
                    self._confirmed.add(name)
                if not self._connected:
                    self._connected = True
                    log.info("progress subscriptions are back")
            if confirmed is not None:
                confirmed.set()
            return
        if kind != "message":
            return
        with self._lock:
            subscribers = list(self._subscribers.get(name, ()))
        try:
            event = ProgressEvent.from_json(json.loads(message["data"]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a progress event on %s that is not one", name)
            return
        # One event object for every subscriber: it is frozen.
        for subscription in subscribers:
            subscription.deliver(event)

    def close(self) -> None:
        """Stops the reader and closes the client (the hub owns it)."""
        self._stop.set()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5.0)
        self._redis.close()
