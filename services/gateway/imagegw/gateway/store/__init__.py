"""The gateway's record stores: the ImageStore protocol and its backends.

`open_store(config)` picks the backend: MongoDB when MongoDBURI is configured,
else an SQLite file in the data directory.
"""

from __future__ import annotations

import os

from imagegw.domain.config import Config
from imagegw.domain.errors import ConfigError
from imagegw.gateway.store.base import ImageStore, StoreUnavailable
from imagegw.gateway.store.mongo import MongoImageStore
from imagegw.gateway.store.sqlite import SqliteImageStore

__all__ = [
    "ImageStore", "MongoImageStore", "SqliteImageStore", "StoreUnavailable", "open_store",
    "SQLITE_FILE_NAME",
]

SQLITE_FILE_NAME = "imagegw.sqlite3"


def open_store(config: Config) -> ImageStore:
    """The configured record store (MongoDB is not contacted until first used)."""
    if config.mongodb_uri:
        return MongoImageStore(config.mongodb_uri, config.mongodb_name)
    if not config.data_dir:
        raise ConfigError(
            "DataDirectory: required when MongoDBURI is not set (the records go to SQLite there)"
        )
    try:
        os.makedirs(config.data_dir, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"DataDirectory: cannot create {config.data_dir}: {exc.strerror}"
        ) from exc
    return SqliteImageStore(os.path.join(config.data_dir, SQLITE_FILE_NAME))
