"""Whether a READY record still has its files, which deployment records belong to, and
the one way an image leaves service.

`FileCheck` stats a local system's image and meta file (positive answers cached
briefly); `Retirement` moves a READY record to EXPIRED and then removes what is left
of its files (auto-expiry, an admin's expire, the lookup and pull paths and
`imagegw reconcile` all go through it); `check_targets` refuses records made for
another image directory or other hosts under the same system name.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imagegw.domain.config import Config, Platform
from imagegw.domain.errors import ConfigError, ImageGatewayError
from imagegw.domain.model import ImageState
from imagegw.domain.runtimes import sif_file, wants_sif
from imagegw.gateway.records import ImageRecord
from imagegw.gateway.store.base import ImageStore
from imagegw.publish import Publisher, publisher_for

__all__ = ["FILE_CHECK_SECONDS", "FileCheck", "FileProblem", "Retirement", "check_targets",
           "target_of"]

log = logging.getLogger(__name__)

#: A stat that found an image's files is trusted for this long (lookups keep their
#: throughput; a deletion shows after at most this delay).
FILE_CHECK_SECONDS = 1.0
_CHECK_CACHE_ENTRIES = 10000


class FileCheck:
    """Checks that a local system's image and meta file are there, with the size the
    record says. Remote systems are not checked here (the sweep does, over SFTP)."""

    def __init__(self, config: Config, *, ttl: float = FILE_CHECK_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.ttl = ttl
        self.clock = clock
        self._present: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def missing(self, image: ImageRecord) -> FileProblem | None:
        """Why a READY image's files are not usable, or None when they are there (or this
        process cannot see the system's image directory, so cannot tell)."""
        platform = self.config.platforms.get(image.system)
        if platform is None or platform.access_type != "local" or not platform.image_dir:
            return None
        key = (image.system, image.image_file)
        with self._lock:
            if self._present.get(key, 0.0) > self.clock():
                return None
        reason = _local_problem(platform.image_dir, image, wants_sif(platform.runtimes))
        if reason is None:
            with self._lock:
                if len(self._present) >= _CHECK_CACHE_ENTRIES:
                    self._present.clear()
                self._present[key] = self.clock() + self.ttl
        return reason

    def forget(self, image: ImageRecord) -> None:
        with self._lock:
            self._present.pop((image.system, image.image_file), None)


@dataclass(frozen=True)
class FileProblem:
    reason: str
    #: True when a file is there but wrong (short): it must go before a republish.
    damaged: bool

    def __str__(self) -> str:
        return self.reason


def _local_problem(image_dir: str, image: ImageRecord, sif: bool) -> FileProblem | None:
    if not os.path.isdir(image_dir):
        return None  # not mounted here (a gateway without the directory): cannot tell
    problems = []
    damaged = False
    names = (image.image_file, image.meta_file, *((sif_file(image.image_file),) if sif else ()))
    for name in names:
        try:
            info = os.stat(os.path.join(image_dir, name))
        except FileNotFoundError:
            problems.append(f"{name} is gone")
            continue
        except OSError as exc:
            log.warning("cannot check %s in %s: %s", name, image_dir, exc)
            return None
        if name == image.image_file and image.size_bytes and info.st_size != image.size_bytes:
            problems.append(f"{name} has {info.st_size} bytes, not {image.size_bytes}")
            damaged = True
    if not problems:
        return None
    return FileProblem(f"{'; '.join(problems)} (in {image_dir})", damaged)


class Retirement:
    """Takes images out of service: the record READY -> EXPIRED atomically (a racing
    lookup sees EXPIRED, never READY without files), then the files leave the image
    directory. An image with a pull in flight (same system and ACL, same id or one of
    its tags) is never touched: that pull decides what its files are."""

    def __init__(self, config: Config, store: ImageStore, *,
                 publishers: Callable[[Platform], Publisher] = publisher_for) -> None:
        self.config = config
        self.store = store
        self.publishers = publishers
        self._lock = threading.Lock()

    def in_flight(self, image: ImageRecord) -> bool:
        return any(
            pull.key.system == image.system and pull.key.acl_key == image.acl_key
            and (pull.image_id == image.image_id or pull.key.reference in image.tags)
            for pull in self.store.in_flight_pulls())

    def retire(self, image: ImageRecord, *, used_before: float | None = None,
               why: str = "expired", remove_files: bool = True) -> bool:
        """Retires `image` (when READY and, with `used_before`, unused since then);
        False when a pull is in flight or it changed meanwhile. TransferFailed (the
        record back to READY) when its files could not be removed. `remove_files` False
        changes the record only (files found gone: what is left is overwritten by the
        next publish, and a file system that briefly showed a stale view loses nothing)."""
        with self._lock:
            if self.in_flight(image):
                log.info("not retiring %s on %s (%s): a pull is in flight", image.image_id,
                         image.system, why)
                return False
            before = self.store.expire_image(image.system, image.image_id, image.acl_key,
                                             used_before)
        if before is None:
            return False  # used (or retired) meanwhile
        if not remove_files:
            log.info("%s image %s on %s (%s)", why, image.image_id, image.system,
                     ", ".join(image.tags) or "untagged")
            return True
        publisher = self.publishers(self.config.platform(image.system))
        try:
            # The SIF beside it first (Apptainer systems; absent elsewhere), then the
            # meta file and the image.
            publisher.remove(sif_file(before.image_file), before.meta_file)
            publisher.remove(before.image_file, before.meta_file)
        except ImageGatewayError:
            # Keep the record honest: the files are still there, try again next time.
            self.store.set_image_state(image.system, image.image_id, ImageState.READY,
                                       image.acl_key)
            raise
        log.info("%s image %s on %s (%s)", why, image.image_id, image.system,
                 ", ".join(image.tags) or "untagged")
        return True


# -- which deployment the records belong to -------------------------------------------

def target_of(platform: Platform) -> dict[str, Any]:
    """Where a system's images go: what makes two configurations one deployment."""
    if platform.access_type == "remote" and platform.ssh is not None:
        return {"accesstype": "remote", "imageDir": platform.ssh.image_dir.rstrip("/") or "/",
                "host": sorted(platform.ssh.hosts)}
    return {"accesstype": platform.access_type,
            "imageDir": os.path.abspath(platform.image_dir or "")}


def _setting(system: str, recorded: dict[str, Any], target: dict[str, Any]) -> str:
    """The configuration key that differs, for the message."""
    if recorded.get("accesstype") != target["accesstype"]:
        return f"Platforms.{system}.accesstype"
    if recorded.get("imageDir") != target["imageDir"]:
        return (f"Platforms.{system}.ssh.imageDir" if target["accesstype"] == "remote"
                else f"Platforms.{system}.local.imageDir")
    return f"Platforms.{system}.host"


def records_location(config: Config) -> str:
    if config.mongodb_uri:
        return f"the MongoDB database {config.mongodb_name}"
    return os.path.join(config.data_dir or ".", "imagegw.sqlite3")


def check_targets(config: Config, store: ImageStore, *, retarget: tuple[str, ...] = ()) -> None:
    """Refuses records of a system that were made for another image directory or other
    hosts (ConfigError naming the setting). The first run records each system's target;
    a system named in `retarget` takes this configuration's (the admin moved it)."""
    for name in sorted(config.platforms):
        target = target_of(config.platforms[name])
        text = json.dumps(target, sort_keys=True)
        if name in retarget:
            store.set_target(name, text)
            log.warning("records of system %s now belong to %s", name, text)
            continue
        recorded_text = store.claim_target(name, text)
        if recorded_text == text:
            continue
        try:
            recorded = json.loads(recorded_text)
        except ValueError:
            recorded = {}
        setting = _setting(name, recorded, target)
        key = setting.rsplit(".", 1)[-1]
        raise ConfigError(
            f"{setting} is {target.get(key)!r}, but the records in {records_location(config)} "
            f"were made for {recorded.get(key)!r}: they belong to another deployment, and "
            f"their READY answers would name images that are not in this one",
            hint="give this configuration its own DataDirectory (or MongoDB database); if "
            "the images really moved there, run `imagegw reconcile --config FILE "
            f"--retarget {name} --repair`")
