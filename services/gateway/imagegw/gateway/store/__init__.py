"""The gateway's record stores: the ImageStore protocol and its backends.

`open_store(config)` picks the backend: MongoDB when MongoDBURI is configured,
else an SQLite file in the data directory. The MongoDB backend (pymongo, ~5 MiB of
modules) is imported by `_mongo_backend` only when a process uses it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from imagegw.domain.config import Config
from imagegw.domain.errors import ConfigError
from imagegw.gateway.store.base import ImageStore, StoreUnavailable
from imagegw.gateway.store.sqlite import SqliteImageStore

if TYPE_CHECKING:
    from imagegw.gateway.store.mongo import MongoImageStore

__all__ = [
    "ImageStore", "MongoImageStore", "SqliteImageStore", "StoreUnavailable", "open_store",
    "SQLITE_FILE_NAME",
]

SQLITE_FILE_NAME = "imagegw.sqlite3"


def _mongo_backend() -> type[MongoImageStore]:
    """The MongoDB store, imported on first use (the one place that imports it)."""
    try:
        from imagegw.gateway.store.mongo import MongoImageStore
    except ImportError as exc:
        raise ConfigError(f"MongoDBURI: the MongoDB store cannot be loaded: {exc}",
                          hint="install pymongo (pip install 'pymongo>=4.20,<5') or remove "
                          "MongoDBURI to keep the records in SQLite") from exc
    return MongoImageStore


def __getattr__(name: str) -> Any:
    if name == "MongoImageStore":  # `from imagegw.gateway.store import MongoImageStore`
        return _mongo_backend()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(config: Config) -> ImageStore:
    """The configured record store (MongoDB is not contacted until first used)."""
    if config.mongodb_uri:
        return _mongo_backend()(config.mongodb_uri, config.mongodb_name)
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
