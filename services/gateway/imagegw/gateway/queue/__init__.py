"""The gateway's job queues and progress hubs: protocols and backends.

`open_queue(config)` picks the backend: Redis when Broker is a redis:// URL,
else in-process memory.
"""

from __future__ import annotations

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
from imagegw.gateway.queue.redis import RedisJobQueue, RedisProgressHub

__all__ = [
    "Claim", "JobQueue", "JobSpec", "MemoryJobQueue", "MemoryProgressHub", "ProgressEvent",
    "ProgressHub", "QueuedJob",
    "QueueUnavailable", "RedisJobQueue", "RedisProgressHub", "Subscription", "open_queue",
]

def open_queue(config: Config) -> tuple[JobQueue, ProgressHub]:
    """The configured job queue and progress hub (Redis is not contacted yet)."""
    if config.broker:
        return (RedisJobQueue(redis_from_url(config.broker),
                              lease_seconds=config.job_lease_seconds),
                RedisProgressHub(redis_from_url(config.broker)))
    return MemoryJobQueue(), MemoryProgressHub()
