"""Fixtures that run one contract suite over every backend.

`image_store`: SQLite (a real file), MongoDB on mongomock-ng, and a real MongoDB
when the test module's `real_mongodb_uri` fixture returns a URI.
`job_queue_factory` / `progress_hub_factory`: in-process memory and a real Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mongomock_ng
import pymongo
import pytest

from imagegw.gateway.queue import (
    JobQueue,
    MemoryJobQueue,
    MemoryProgressHub,
    ProgressHub,
    RedisJobQueue,
    RedisProgressHub,
)
from imagegw.gateway.store import ImageStore, MongoImageStore, SqliteImageStore
from tests.support.redis_server import RedisServer

QueueFactory = Callable[..., JobQueue]
HubFactory = Callable[..., ProgressHub]


@pytest.fixture(params=["sqlite", "mongomock", "mongodb"])
def image_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ImageStore]:
    """Every ImageStore backend, fresh and empty for each test."""
    if request.param == "sqlite":
        store: Any = SqliteImageStore(str(tmp_path / "imagegw.sqlite3"))
        yield store
        store.close()
    elif request.param == "mongomock":
        store = MongoImageStore(mongomock_ng.MongoClient(), "imagegw_test")
        yield store
        store.close()
    else:
        uri = request.getfixturevalue("real_mongodb_uri")
        if not uri:
            pytest.skip("set IMAGEGW_TEST_MONGODB_URI to run against a real MongoDB")
        database = f"imagegw_test_{uuid.uuid4().hex[:12]}"
        client: pymongo.MongoClient[Any] = pymongo.MongoClient(
            uri, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000, socketTimeoutMS=30000)
        store = MongoImageStore(client, database)
        yield store
        client.drop_database(database)
        store.close()


@pytest.fixture(params=["memory", "redis"])
def job_queue_factory(request: pytest.FixtureRequest) -> Iterator[QueueFactory]:
    """Makes JobQueues over one backend (for Redis: one server, emptied per test)."""
    made: list[JobQueue] = []

    if request.param == "memory":
        def make(lease_seconds: float = 30.0) -> JobQueue:
            made.append(MemoryJobQueue(lease_seconds=lease_seconds))
            return made[-1]
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        admin = server.client()
        admin.flushall()
        admin.close()

        def make(lease_seconds: float = 30.0) -> JobQueue:
            made.append(RedisJobQueue(server.client(), lease_seconds=lease_seconds))
            return made[-1]

    yield make
    for queue in made:
        queue.close()


@pytest.fixture(params=["memory", "redis"])
def progress_hub_factory(request: pytest.FixtureRequest) -> Iterator[HubFactory]:
    """Makes ProgressHubs over one backend."""
    made: list[ProgressHub] = []

    if request.param == "memory":
        def make(buffer_size: int = 256) -> ProgressHub:
            made.append(MemoryProgressHub(buffer_size=buffer_size))
            return made[-1]
    else:
        server: RedisServer = request.getfixturevalue("redis_server")

        def make(buffer_size: int = 256) -> ProgressHub:
            made.append(RedisProgressHub(server.client(), buffer_size=buffer_size))
            return made[-1]

    yield make
    for hub in made:
        hub.close()
