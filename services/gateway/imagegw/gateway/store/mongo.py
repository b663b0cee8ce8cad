"""The MongoDB record store, for sites that run several gateways or already run MongoDB.

Collections `pulls` and `images` with unique keys; begin_pull is one atomic upsert.
pymongo connects lazily: nothing touches the network until the first operation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pymongo
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    DuplicateKeyError,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from imagegw.domain.model import Failure, ImageState, Progress
from imagegw.gateway.records import ImageRecord, PullKey, PullRecord
from imagegw.gateway.store import codec, paging
from imagegw.gateway.store.base import StoreUnavailable, Viewer

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Timeouts for clients this store creates from a URI (milliseconds).
CONNECT_TIMEOUT_MS = 5000
SERVER_SELECTION_TIMEOUT_MS = 5000
SOCKET_TIMEOUT_MS = 30000
RECONNECT_ATTEMPTS = 4
RECONNECT_BACKOFF_SECONDS = 0.2
_BEGIN_PULL_ROUNDS = 5

_NOT_IN_FLIGHT = {"$nin": list(codec.IN_FLIGHT_STATES)}


def _key_filter(key: PullKey) -> dict[str, Any]:
    return {"system": key.system, "reference": key.reference, "acl_key": key.acl_key}


def _image_filter(system: str, image_id: str, acl_key: str) -> dict[str, Any]:
    return {"system": system, "image_id": image_id, "acl_key": acl_key}


def _visible_to(viewer: Viewer) -> dict[str, Any]:
    uid, groups = viewer
    return {"$or": [{"acl_key": ""}, {"user_acl": uid}, {"group_acl": {"$in": list(groups)}}]}


def _guard(key: PullKey, job_id: str) -> dict[str, Any]:
    return {**_key_filter(key), "job_id": job_id,
            "state": {"$in": list(codec.IN_FLIGHT_STATES)}}


class MongoImageStore:
    """ImageStore on a MongoDB database; pass a URI or a ready pymongo-style client."""

    def __init__(self, client_or_uri: Any, database: str) -> None:
        if isinstance(client_or_uri, str):
            self._client: Any = pymongo.MongoClient(
                client_or_uri, connect=False, connectTimeoutMS=CONNECT_TIMEOUT_MS,
                serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
                socketTimeoutMS=SOCKET_TIMEOUT_MS,
            )
        else:
            self._client = client_or_uri
        db = self._client[database]
        self._pulls: Collection[Any] = db["pulls"]
        self._images: Collection[Any] = db["images"]
        self._targets: Collection[Any] = db["targets"]
        self._database = database
        self._indexes_ready = False
        self._indexes_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------

    def _call(self, action: str, operation: Callable[[], T]) -> T:
        """Runs one operation: indexes first, AutoReconnect retried with backoff,
        driver errors translated to StoreUnavailable."""
        for attempt in range(1, RECONNECT_ATTEMPTS + 1):
            try:
                self._ensure_indexes()
                return operation()
            except ServerSelectionTimeoutError as exc:
                # pymongo already waited for a server; waiting again only delays the answer.
                raise self._unavailable(action, exc) from exc
            except AutoReconnect as exc:
                if attempt == RECONNECT_ATTEMPTS:
                    raise self._unavailable(action, exc) from exc
                log.warning("MongoDB connection lost while trying to %s (attempt %d): %s",
                            action, attempt, exc)
                time.sleep(RECONNECT_BACKOFF_SECONDS * 2 ** (attempt - 1))
            except PyMongoError as exc:
                raise self._unavailable(action, exc) from exc
        raise AssertionError("unreachable")

    def _unavailable(self, action: str, exc: PyMongoError) -> StoreUnavailable:
        hint = ("check that MongoDB is running and MongoDBURI points at it"
                if isinstance(exc, ConnectionFailure)
                else "check the MongoDB user's permissions on the database")
        return StoreUnavailable(
            f"the MongoDB record store ({self._database}) failed to {action}: {exc}", hint=hint
        )

    def _ensure_indexes(self) -> None:
        if self._indexes_ready:
            return
        with self._indexes_lock:
            if self._indexes_ready:
                return
            self._pulls.create_index(
                [("system", 1), ("reference", 1), ("acl_key", 1)], unique=True,
                name="pull_key")
            self._pulls.create_index([("state", 1)], name="pull_state")
            if "image_key" in self._images.index_information():
                # Before acl_key was part of an image's identity, (system, image_id) was unique.
                self._images.drop_index("image_key")
            self._images.create_index([("system", 1), ("image_id", 1), ("acl_key", 1)],
                                      unique=True, name="image_acl_key")
            self._images.create_index([("system", 1), ("last_pull", -1), ("image_id", 1)],
                                      name="image_order")
            self._indexes_ready = True

    # -- pulls ------------------------------------------------------------------------

    def begin_pull(
        self, key: PullKey, job_id: str, now: float, *, requester_uid: int = -1,
        user_acl: tuple[int, ...] = (), group_acl: tuple[int, ...] = (),
        keep_ready_since: float | None = None,
    ) -> tuple[PullRecord, bool]:
        update = {
            "$set": {"state": int(ImageState.QUEUED), "job_id": job_id, "attempts": 0,
                     "started": 0.0, "failure": None, "progress": None,
                     "requester_uid": requester_uid, "user_acl": list(user_acl),
                     "group_acl": list(group_acl), "updated": now},
            "$setOnInsert": {"created": now, "image_id": "", "ready_time": 0.0},
        }

        startable: dict[str, Any] = {**_key_filter(key), "state": _NOT_IN_FLIGHT}
        if keep_ready_since is not None:
            startable["$nor"] = [{"state": int(ImageState.READY),
                                  "ready_time": {"$gt": keep_ready_since}}]

        def kept(record: PullRecord) -> bool:
            return record.state.in_flight or (
                keep_ready_since is not None and record.state == ImageState.READY
                and record.ready_time > keep_ready_since)

        def attempt() -> tuple[dict[str, Any] | None, bool]:
            try:
                doc = self._pulls.find_one_and_update(
                    startable, update, upsert=True, return_document=ReturnDocument.AFTER)
                return doc, True
            except DuplicateKeyError:
                # The record exists and is in flight (or kept READY): the filter missed it.
                return self._pulls.find_one(_key_filter(key)), False

        # A record can leave flight between the upsert and the read: try again then.
        for _ in range(_BEGIN_PULL_ROUNDS):
            doc, started = self._call("start a pull", attempt)
            if doc is None:
                continue
            record = codec.pull_from_doc(doc)
            if started or record.job_id == job_id:
                # The same job_id in flight: our own upsert, retried after a lost reply.
                return record, True
            if kept(record):
                return record, False
        raise StoreUnavailable(
            f"could not start the pull of {key.reference}: its record keeps changing",
            hint="try again",
        )

    def get_pull(self, key: PullKey) -> PullRecord | None:
        doc = self._call("read a pull", lambda: self._pulls.find_one(_key_filter(key)))
        return None if doc is None else codec.pull_from_doc(doc)

    def _guarded_set(self, action: str, key: PullKey, job_id: str,
                     fields: dict[str, Any]) -> bool:
        result = self._call(action, lambda: self._pulls.update_one(
            _guard(key, job_id), {"$set": fields}))
        return result.matched_count == 1

    def update_pull(
        self, key: PullKey, job_id: str, state: ImageState, progress: Progress | None,
        now: float,
    ) -> bool:
        return self._guarded_set("update a pull", key, job_id, {
            "state": int(state), "progress": codec.progress_to_doc(progress), "updated": now})

    def note_attempt(self, key: PullKey, job_id: str, now: float) -> int:
        doc = self._call("count a pull attempt", lambda: self._pulls.find_one_and_update(
            _guard(key, job_id),
            {"$inc": {"attempts": 1}, "$set": {"started": now, "updated": now}},
            return_document=ReturnDocument.AFTER))
        return 0 if doc is None else int(doc["attempts"])

    def complete_pull(self, key: PullKey, job_id: str, image: ImageRecord, now: float) -> bool:
        # Not one transaction (a standalone MongoDB has none): the image is written
        # before the pull points at it, so a reader never sees a dangling image_id.
        if self._call("read a pull", lambda: self._pulls.find_one(_guard(key, job_id))) is None:
            return False
        doc = codec.image_to_doc(image)
        tags = codec.merged_tags(doc.pop("tags"), key.reference)
        image_key = _image_filter(doc.pop("system"), doc.pop("image_id"), doc.pop("acl_key"))
        self._call("record an image", lambda: self._images.update_one(
            image_key, {"$set": doc, "$addToSet": {"tags": {"$each": tags}}}, upsert=True))
        self._call("move a tag", lambda: self._images.update_many(
            {"system": key.system, "acl_key": key.acl_key,
             "image_id": {"$ne": image.image_id}, "tags": key.reference},
            {"$pull": {"tags": key.reference}}))
        return self._guarded_set("record a finished pull", key, job_id, {
            "state": int(ImageState.READY), "image_id": image.image_id, "ready_time": now,
            "updated": now, "failure": None})

    def fail_pull(self, key: PullKey, job_id: str, failure: Failure, now: float) -> bool:
        return self._guarded_set("record a failed pull", key, job_id, {
            "state": int(ImageState.FAILED), "failure": codec.failure_to_doc(failure),
            "updated": now})

    def refresh_pull(self, key: PullKey, job_id: str, now: float) -> bool:
        return self._guarded_set("record an unchanged image", key, job_id, {
            "state": int(ImageState.READY), "ready_time": now, "updated": now,
            "failure": None})

    def in_flight_pulls(self) -> list[PullRecord]:
        docs = self._call("list pulls in flight", lambda: list(self._pulls.find(
            {"state": {"$in": list(codec.IN_FLIGHT_STATES)}}).sort(
            [("created", 1), ("system", 1), ("reference", 1), ("acl_key", 1)])))
        return [codec.pull_from_doc(d) for d in docs]

    def list_pulls(self, system: str | None = None) -> list[PullRecord]:
        query = {} if system is None else {"system": system}
        docs = self._call("list pulls", lambda: list(self._pulls.find(query).sort(
            [("updated", -1), ("system", 1), ("reference", 1), ("acl_key", 1)])))
        return [codec.pull_from_doc(d) for d in docs]

    def pulls_of(self, system: str, reference: str) -> list[PullRecord]:
        docs = self._call("read the pulls of a reference", lambda: list(self._pulls.find(
            {"system": system, "reference": reference}).sort([("acl_key", 1)])))
        return [codec.pull_from_doc(d) for d in docs]

    # -- images -----------------------------------------------------------------------

    def get_image(self, system: str, image_id: str, acl_key: str = "") -> ImageRecord | None:
        doc = self._call("read an image", lambda: self._images.find_one(
            _image_filter(system, image_id, acl_key)))
        return None if doc is None else codec.image_from_doc(doc)

    def find_images(self, system: str, image_id: str) -> list[ImageRecord]:
        docs = self._call("find an image", lambda: list(self._images.find(
            {"system": system, "image_id": image_id}).sort([("acl_key", 1)])))
        return [codec.image_from_doc(d) for d in docs]

    def list_images(
        self, system: str, state: ImageState | None, page_size: int, page_token: str,
        viewer: Viewer | None = None,
    ) -> tuple[list[ImageRecord], str]:
        limit = paging.page_limit(page_size)
        cursor = paging.decode_token(page_token)
        query: dict[str, Any] = {
            "system": system,
            "state": {"$ne": int(ImageState.EXPIRED)} if state is None else int(state),
        }
        conditions: list[dict[str, Any]] = []
        if viewer is not None:
            conditions.append(_visible_to(viewer))
        if cursor is not None:
            conditions.append({"$or": [
                {"last_pull": {"$lt": cursor.last_pull}},
                {"last_pull": cursor.last_pull, "image_id": {"$gt": cursor.image_id}},
                {"last_pull": cursor.last_pull, "image_id": cursor.image_id,
                 "acl_key": {"$gt": cursor.acl_key}},
            ]})
        if conditions:
            query["$and"] = conditions
        docs = self._call("list images", lambda: list(
            self._images.find(query).sort([("last_pull", -1), ("image_id", 1), ("acl_key", 1)])
            .limit(limit + 1)))
        return paging.page([codec.image_from_doc(d) for d in docs], limit, paging.cursor_of)

    def touch_image(self, system: str, image_id: str, now: float, acl_key: str = "") -> None:
        self._call("record an image use", lambda: self._images.update_one(
            _image_filter(system, image_id, acl_key), {"$set": {"last_used": now}}))

    def set_image_state(self, system: str, image_id: str, state: ImageState,
                        acl_key: str = "") -> bool:
        result = self._call("change an image's state", lambda: self._images.update_one(
            _image_filter(system, image_id, acl_key), {"$set": {"state": int(state)}}))
        return result.matched_count == 1

    def expire_image(self, system: str, image_id: str, acl_key: str,
                     used_before: float | None = None) -> ImageRecord | None:
        query: dict[str, Any] = {**_image_filter(system, image_id, acl_key),
                                 "state": int(ImageState.READY)}
        if used_before is not None:
            query["last_used"] = {"$lt": used_before}
        doc = self._call("expire an image", lambda: self._images.find_one_and_update(
            query, {"$set": {"state": int(ImageState.EXPIRED)}},
            return_document=ReturnDocument.BEFORE))
        return None if doc is None else codec.image_from_doc(doc)

    def expirable_images(self, system: str, used_before: float) -> list[ImageRecord]:
        docs = self._call("list expirable images", lambda: list(self._images.find(
            {"system": system, "state": int(ImageState.READY), "last_used": {"$lt": used_before}})
            .sort([("last_used", 1), ("image_id", 1), ("acl_key", 1)])))
        return [codec.image_from_doc(d) for d in docs]

    # -- deployment targets -----------------------------------------------------------

    def claim_target(self, system: str, target: str) -> str:
        def claim() -> Any:
            try:
                return self._targets.find_one_and_update(
                    {"_id": system}, {"$setOnInsert": {"target": target}}, upsert=True,
                    return_document=ReturnDocument.AFTER)
            except DuplicateKeyError:  # a concurrent upsert won
                return self._targets.find_one({"_id": system})
        return str(self._call("record a system's deployment target", claim)["target"])

    def set_target(self, system: str, target: str) -> None:
        self._call("change a system's deployment target", lambda: self._targets.update_one(
            {"_id": system}, {"$set": {"target": target}}, upsert=True))

    # -- health and lifetime ----------------------------------------------------------

    def ping(self) -> bool:
        try:
            self._client.admin.command("ping")
        except PyMongoError as exc:
            log.warning("MongoDB ping failed: %s", exc)
            return False
        return True

    def close(self) -> None:
        self._client.close()
