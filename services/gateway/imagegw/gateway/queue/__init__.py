"""The gateway's job queues and progress hubs: protocols and backends.

`open_queue(config)` picks the backend: Redis when Broker is a redis:// URL,
else in-process memory. The Redis backend (redis-py) is imported by `_redis_backend`
only when a process uses it.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

from imagegw.directory import redis_from_url
from imagegw.domain.config import Config
from imagegw.gateway.queue.base import (
    Claim,
    JobQueue,
    JobSpec,
    ProgressEvent,
    ProgressHub,
    QueuedJob,
    QueueUnavailable,
    Subscription,
)
from imagegw.gateway.queue.memory import MemoryJobQueue, MemoryProgressHub

if TYPE_CHECKING:
    from imagegw.gateway.queue.redis import RedisJobQueue, RedisProgressHub

__all__ = [
    "Claim", "JobQueue", "JobSpec", "MemoryJobQueue", "MemoryProgressHub", "ProgressEvent",
    "ProgressHub", "QueuedJob",
    "QueueUnavailable", "RedisJobQueue", "RedisProgressHub", "Subscription", "open_queue",
]

def _redis_backend() -> ModuleType:
    """`imagegw.gateway.queue.redis`, imported on first use (the one place that does;
    `redis_from_url` turns a missing redis-py into a ConfigError naming Broker)."""
    from imagegw.gateway.queue import redis

    return redis


def __getattr__(name: str) -> Any:
    if name in ("RedisJobQueue", "RedisProgressHub"):  # `from imagegw.gateway.queue import ...`
        return getattr(_redis_backend(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_queue(config: Config) -> tuple[JobQueue, ProgressHub]:
    """The configured job queue and progress hub (Redis is not contacted yet)."""
    if config.broker:
        jobs_client, progress_client = redis_from_url(config.broker), redis_from_url(config.broker)
        backend = _redis_backend()
        return (backend.RedisJobQueue(jobs_client, lease_seconds=config.job_lease_seconds),
                backend.RedisProgressHub(progress_client))
    return MemoryJobQueue(), MemoryProgressHub()
