"""The SQLite record store: the embedded default when no MongoDB is configured.

One file in WAL mode; one connection per calling thread; every write is one
BEGIN IMMEDIATE transaction, so concurrent gRPC threads (and processes) serialize.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from imagegw.domain.model import Failure, ImageState, Progress
from imagegw.gateway.records import ImageRecord, PullKey, PullRecord
from imagegw.gateway.store import codec, paging
from imagegw.gateway.store.base import StoreUnavailable, Viewer

log = logging.getLogger(__name__)

#: 2: an image's identity is (system, image_id, acl_key), not (system, image_id).
SCHEMA_VERSION = 2
BUSY_TIMEOUT_SECONDS = 10.0

_IMAGES_TABLE = """(
    system TEXT NOT NULL, image_id TEXT NOT NULL, format TEXT NOT NULL,
    manifest_digest TEXT NOT NULL, metadata TEXT NOT NULL,
    image_file TEXT NOT NULL, meta_file TEXT NOT NULL, size_bytes INTEGER NOT NULL,
    tags TEXT NOT NULL DEFAULT '[]', state INTEGER NOT NULL,
    user_acl TEXT NOT NULL DEFAULT '[]', group_acl TEXT NOT NULL DEFAULT '[]',
    acl_key TEXT NOT NULL DEFAULT '', last_pull REAL NOT NULL DEFAULT 0,
    last_used REAL NOT NULL DEFAULT 0, extra TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (system, image_id, acl_key)
)"""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pulls (
    system TEXT NOT NULL, reference TEXT NOT NULL, acl_key TEXT NOT NULL,
    state INTEGER NOT NULL, job_id TEXT NOT NULL, image_id TEXT NOT NULL DEFAULT '',
    failure TEXT, progress TEXT,
    user_acl TEXT NOT NULL DEFAULT '[]', group_acl TEXT NOT NULL DEFAULT '[]',
    requester_uid INTEGER NOT NULL DEFAULT -1, attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL DEFAULT 0, started REAL NOT NULL DEFAULT 0,
    updated REAL NOT NULL DEFAULT 0, ready_time REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (system, reference, acl_key)
);
CREATE INDEX IF NOT EXISTS pulls_by_state ON pulls (state);
CREATE TABLE IF NOT EXISTS images {_IMAGES_TABLE};
CREATE INDEX IF NOT EXISTS images_by_last_pull ON images (system, last_pull DESC, image_id);
CREATE TABLE IF NOT EXISTS targets (system TEXT PRIMARY KEY, target TEXT NOT NULL);
"""

# Version 1 keyed images by (system, image_id): rebuild the table with the new key.
_MIGRATE_1_TO_2 = (
    "DROP INDEX IF EXISTS images_by_last_pull",
    "ALTER TABLE images RENAME TO images_v1",
    f"CREATE TABLE images {_IMAGES_TABLE}",
    "INSERT INTO images SELECT * FROM images_v1",
    "DROP TABLE images_v1",
    "CREATE INDEX images_by_last_pull ON images (system, last_pull DESC, image_id)",
    "UPDATE schema_version SET version = 2",
)

# Who may see an image: public, or the viewer's uid or one of its gids in the ACL.
_VISIBLE_SQL = (
    "(acl_key = '' OR EXISTS (SELECT 1 FROM json_each(images.user_acl) WHERE value = ?)"
    " OR EXISTS (SELECT 1 FROM json_each(images.group_acl) WHERE value IN ({groups})))"
)
_IMAGE_WHERE = "system = ? AND image_id = ? AND acl_key = ?"

_IN_FLIGHT_SQL = "(" + ",".join(str(s) for s in codec.IN_FLIGHT_STATES) + ")"
_PULL_JSON_COLUMNS = ("failure", "progress", "user_acl", "group_acl")
_IMAGE_JSON_COLUMNS = ("metadata", "tags", "user_acl", "group_acl", "extra")
_IMAGE_COLUMNS = (
    "system", "image_id", "format", "manifest_digest", "metadata", "image_file", "meta_file",
    "size_bytes", "tags", "state", "user_acl", "group_acl", "acl_key", "last_pull",
    "last_used", "extra",
)
_KEY_WHERE = "system = ? AND reference = ? AND acl_key = ?"


def _key_args(key: PullKey) -> tuple[str, str, str]:
    return (key.system, key.reference, key.acl_key)


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _row_doc(row: sqlite3.Row, json_columns: tuple[str, ...]) -> dict[str, Any]:
    doc = dict(row)
    for column in json_columns:
        if doc.get(column) is not None:
            doc[column] = json.loads(doc[column])
    return doc


def _pull(row: sqlite3.Row) -> PullRecord:
    return codec.pull_from_doc(_row_doc(row, _PULL_JSON_COLUMNS))


def _image(row: sqlite3.Row) -> ImageRecord:
    return codec.image_from_doc(_row_doc(row, _IMAGE_JSON_COLUMNS))


def _private_files(path: str) -> None:
    """The records (private references and ACLs) are the service account's only: the file
    is created 0600 before SQLite opens it (SQLite gives its -wal and -shm files the
    database file's mode), and older files are made 0600."""
    if path == ":memory:" or path.startswith("file:"):
        return
    with contextlib.suppress(FileExistsError, FileNotFoundError):  # SQLite reports the latter
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for name in (path, f"{path}-wal", f"{path}-shm"):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(os.stat(name).st_mode) != 0o600:
                os.chmod(name, 0o600)


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced: the store closes the ones still
    alive, and a finished thread's connection is closed when collected."""


class SqliteImageStore:
    """ImageStore on one SQLite file; safe to share between threads."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._connections_lock = threading.Lock()
        self._closed = False
        _private_files(path)
        self._create_schema()

    # -- connections and transactions -------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreUnavailable(f"the record store {self.path} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE.
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                check_same_thread=False, factory=_Connection,
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.add(conn)
        return conn

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreUnavailable(
                f"the record store {self.path} failed to {action}: {exc}",
                hint="check that the data directory is writable and the disk is not full",
            ) from exc

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its start."""
        with self._errors(action):
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, action: str, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._errors(action):
            return self._connection().execute(sql, args).fetchall()

    def _create_schema(self) -> None:
        with self._write("create its schema") as tx:
            # Not executescript: it would commit; the schema is created in one transaction.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                tx.execute(statement)
            row = tx.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                tx.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row["version"] == 1:
                log.info("upgrading the record store %s to schema version 2", self.path)
                for statement in _MIGRATE_1_TO_2:
                    tx.execute(statement)
            elif row["version"] > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"the record store {self.path} has schema version {row['version']}, "
                    f"newer than this gateway's {SCHEMA_VERSION}",
                    hint="run the gateway version that created it, or point DataDirectory "
                    "elsewhere",
                )

    # -- pulls ------------------------------------------------------------------------

    def begin_pull(
        self, key: PullKey, job_id: str, now: float, *, requester_uid: int = -1,
        user_acl: tuple[int, ...] = (), group_acl: tuple[int, ...] = (),
        keep_ready_since: float | None = None,
    ) -> tuple[PullRecord, bool]:
        with self._write("start a pull") as tx:
            row = tx.execute(f"SELECT * FROM pulls WHERE {_KEY_WHERE}", _key_args(key)).fetchone()
            if row is not None and (ImageState(row["state"]).in_flight or (
                    keep_ready_since is not None and row["state"] == int(ImageState.READY)
                    and row["ready_time"] > keep_ready_since)):
                return _pull(row), False
            fields = (int(ImageState.QUEUED), job_id, requester_uid, _dump(list(user_acl)),
                      _dump(list(group_acl)), now)
            if row is None:
                tx.execute(
                    "INSERT INTO pulls (state, job_id, requester_uid, user_acl, group_acl,"
                    " updated, created, system, reference, acl_key)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*fields, now, *_key_args(key)),
                )
            else:
                tx.execute(
                    "UPDATE pulls SET state = ?, job_id = ?, requester_uid = ?, user_acl = ?,"
                    " group_acl = ?, updated = ?, attempts = 0, started = 0, failure = NULL,"
                    f" progress = NULL WHERE {_KEY_WHERE}",
                    (*fields, *_key_args(key)),
                )
            row = tx.execute(f"SELECT * FROM pulls WHERE {_KEY_WHERE}", _key_args(key)).fetchone()
            return _pull(row), True

    def get_pull(self, key: PullKey) -> PullRecord | None:
        rows = self._read("read a pull", f"SELECT * FROM pulls WHERE {_KEY_WHERE}",
                          _key_args(key))
        return _pull(rows[0]) if rows else None

    def _guarded_update(self, action: str, key: PullKey, job_id: str, assignments: str,
                        args: tuple[Any, ...]) -> bool:
        with self._write(action) as tx:
            return self._guarded(tx, key, job_id, assignments, args)

    @staticmethod
    def _guarded(tx: sqlite3.Connection, key: PullKey, job_id: str, assignments: str,
                 args: tuple[Any, ...]) -> bool:
        cursor = tx.execute(
            f"UPDATE pulls SET {assignments} WHERE {_KEY_WHERE} AND job_id = ?"
            f" AND state IN {_IN_FLIGHT_SQL}",
            (*args, *_key_args(key), job_id),
        )
        return cursor.rowcount == 1

    def update_pull(
        self, key: PullKey, job_id: str, state: ImageState, progress: Progress | None,
        now: float,
    ) -> bool:
        return self._guarded_update(
            "update a pull", key, job_id, "state = ?, progress = ?, updated = ?",
            (int(state), _dump(codec.progress_to_doc(progress)), now),
        )

    def note_attempt(self, key: PullKey, job_id: str, now: float) -> int:
        with self._write("count a pull attempt") as tx:
            if not self._guarded(tx, key, job_id, "attempts = attempts + 1, started = ?,"
                                 " updated = ?", (now, now)):
                return 0
            row = tx.execute(f"SELECT attempts FROM pulls WHERE {_KEY_WHERE}",
                             _key_args(key)).fetchone()
            return int(row["attempts"])

    def complete_pull(self, key: PullKey, job_id: str, image: ImageRecord, now: float) -> bool:
        with self._write("record a finished pull") as tx:
            if not self._guarded(
                tx, key, job_id,
                "state = ?, image_id = ?, ready_time = ?, updated = ?, failure = NULL",
                (int(ImageState.READY), image.image_id, now, now),
            ):
                return False
            self._upsert_image(tx, image, key.reference)
            self._untag_others(tx, key, image.image_id)
            return True

    @staticmethod
    def _upsert_image(tx: sqlite3.Connection, image: ImageRecord, reference: str) -> None:
        row = tx.execute(f"SELECT tags FROM images WHERE {_IMAGE_WHERE}",
                         (image.system, image.image_id, image.acl_key)).fetchone()
        doc = codec.image_to_doc(image)
        old_tags = json.loads(row["tags"]) if row is not None else []
        doc["tags"] = codec.merged_tags(old_tags, *image.tags, reference)
        for column in _IMAGE_JSON_COLUMNS:
            doc[column] = _dump(doc[column])
        placeholders = ", ".join("?" for _ in _IMAGE_COLUMNS)
        tx.execute(
            f"INSERT OR REPLACE INTO images ({', '.join(_IMAGE_COLUMNS)}) VALUES ({placeholders})",
            tuple(doc[c] for c in _IMAGE_COLUMNS),
        )

    @staticmethod
    def _untag_others(tx: sqlite3.Connection, key: PullKey, image_id: str) -> None:
        rows = tx.execute(
            "SELECT image_id, tags FROM images WHERE system = ? AND acl_key = ?"
            " AND image_id <> ? AND EXISTS (SELECT 1 FROM json_each(images.tags)"
            " WHERE json_each.value = ?)",
            (key.system, key.acl_key, image_id, key.reference),
        ).fetchall()
        for row in rows:
            tags = [t for t in json.loads(row["tags"]) if t != key.reference]
            tx.execute(f"UPDATE images SET tags = ? WHERE {_IMAGE_WHERE}",
                       (_dump(tags), key.system, row["image_id"], key.acl_key))

    def fail_pull(self, key: PullKey, job_id: str, failure: Failure, now: float) -> bool:
        return self._guarded_update(
            "record a failed pull", key, job_id, "state = ?, failure = ?, updated = ?",
            (int(ImageState.FAILED), _dump(codec.failure_to_doc(failure)), now),
        )

    def refresh_pull(self, key: PullKey, job_id: str, now: float) -> bool:
        return self._guarded_update(
            "record an unchanged image", key, job_id,
            "state = ?, ready_time = ?, updated = ?, failure = NULL",
            (int(ImageState.READY), now, now),
        )

    def in_flight_pulls(self) -> list[PullRecord]:
        rows = self._read("list pulls in flight",
                          f"SELECT * FROM pulls WHERE state IN {_IN_FLIGHT_SQL}"
                          " ORDER BY created, system, reference, acl_key")
        return [_pull(r) for r in rows]

    def list_pulls(self, system: str | None = None) -> list[PullRecord]:
        where, args = ("WHERE system = ?", (system,)) if system is not None else ("", ())
        rows = self._read(
            "list pulls",
            f"SELECT * FROM pulls {where} ORDER BY updated DESC, system, reference, acl_key",
            args,
        )
        return [_pull(r) for r in rows]

    def pulls_of(self, system: str, reference: str) -> list[PullRecord]:
        rows = self._read("read the pulls of a reference",
                          "SELECT * FROM pulls WHERE system = ? AND reference = ? ORDER BY acl_key",
                          (system, reference))
        return [_pull(r) for r in rows]

    # -- images -----------------------------------------------------------------------

    def get_image(self, system: str, image_id: str, acl_key: str = "") -> ImageRecord | None:
        rows = self._read("read an image", f"SELECT * FROM images WHERE {_IMAGE_WHERE}",
                          (system, image_id, acl_key))
        return _image(rows[0]) if rows else None

    def find_images(self, system: str, image_id: str) -> list[ImageRecord]:
        rows = self._read("find an image",
                          "SELECT * FROM images WHERE system = ? AND image_id = ? ORDER BY acl_key",
                          (system, image_id))
        return [_image(r) for r in rows]

    def list_images(
        self, system: str, state: ImageState | None, page_size: int, page_token: str,
        viewer: Viewer | None = None,
    ) -> tuple[list[ImageRecord], str]:
        limit = paging.page_limit(page_size)
        cursor = paging.decode_token(page_token)
        clauses = ["system = ?"]
        args: list[Any] = [system]
        if state is None:
            clauses.append("state <> ?")
            args.append(int(ImageState.EXPIRED))
        else:
            clauses.append("state = ?")
            args.append(int(state))
        if viewer is not None:
            uid, groups = viewer
            clauses.append(_VISIBLE_SQL.format(groups=",".join("?" for _ in groups) or "NULL"))
            args += [uid, *groups]
        if cursor is not None:
            clauses.append("(last_pull < ? OR (last_pull = ? AND (image_id > ?"
                           " OR (image_id = ? AND acl_key > ?))))")
            args += [cursor.last_pull, cursor.last_pull, cursor.image_id, cursor.image_id,
                     cursor.acl_key]
        rows = self._read(
            "list images",
            f"SELECT * FROM images WHERE {' AND '.join(clauses)}"
            " ORDER BY last_pull DESC, image_id, acl_key LIMIT ?",
            (*args, limit + 1),
        )
        return paging.page([_image(r) for r in rows], limit, paging.cursor_of)

    def touch_image(self, system: str, image_id: str, now: float, acl_key: str = "") -> None:
        with self._write("record an image use") as tx:
            tx.execute(f"UPDATE images SET last_used = ? WHERE {_IMAGE_WHERE}",
                       (now, system, image_id, acl_key))

    def set_image_state(self, system: str, image_id: str, state: ImageState,
                        acl_key: str = "") -> bool:
        with self._write("change an image's state") as tx:
            cursor = tx.execute(f"UPDATE images SET state = ? WHERE {_IMAGE_WHERE}",
                                (int(state), system, image_id, acl_key))
            return cursor.rowcount == 1

    def expire_image(self, system: str, image_id: str, acl_key: str,
                     used_before: float | None = None) -> ImageRecord | None:
        with self._write("expire an image") as tx:
            row = tx.execute(f"SELECT * FROM images WHERE {_IMAGE_WHERE} AND state = ?",
                             (system, image_id, acl_key, int(ImageState.READY))).fetchone()
            if row is None or (used_before is not None and row["last_used"] >= used_before):
                return None
            tx.execute(f"UPDATE images SET state = ? WHERE {_IMAGE_WHERE}",
                       (int(ImageState.EXPIRED), system, image_id, acl_key))
            return _image(row)

    def expirable_images(self, system: str, used_before: float) -> list[ImageRecord]:
        rows = self._read(
            "list expirable images",
            "SELECT * FROM images WHERE system = ? AND state = ? AND last_used < ?"
            " ORDER BY last_used, image_id, acl_key",
            (system, int(ImageState.READY), used_before))
        return [_image(r) for r in rows]

    # -- deployment targets -----------------------------------------------------------

    def claim_target(self, system: str, target: str) -> str:
        with self._write("record a system's deployment target") as tx:
            tx.execute("INSERT OR IGNORE INTO targets (system, target) VALUES (?, ?)",
                       (system, target))
            row = tx.execute("SELECT target FROM targets WHERE system = ?", (system,)).fetchone()
            return str(row["target"])

    def set_target(self, system: str, target: str) -> None:
        with self._write("change a system's deployment target") as tx:
            tx.execute("INSERT OR REPLACE INTO targets (system, target) VALUES (?, ?)",
                       (system, target))

    # -- health and lifetime ----------------------------------------------------------

    def ping(self) -> bool:
        try:
            self._read("answer a ping", "SELECT 1")
        except StoreUnavailable as exc:
            log.warning("record store ping failed: %s", exc)
            return False
        return True

    def close(self) -> None:
        self._closed = True
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            conn.close()
