"""Image expiry: ImageExpirationTimeout after the last pull or lookup, on a schedule
inside the gateway (`ExpiryLoop`) and on an admin's request (`Expirer`).

An image expires through `presence.Retirement` (shared with the file checks and
`imagegw reconcile`): the record moves READY -> EXPIRED atomically (so a lookup racing
with expiry sees EXPIRED, not a READY image without files), then the image and meta
files leave the system's image directory. An image with a pull in flight (same system
and ACL, same id or one of its tags) is never touched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from imagegw.domain.config import Config, Platform
from imagegw.domain.errors import ImageGatewayError, ImageNotFound, PermissionDenied
from imagegw.domain.model import ImageState
from imagegw.gateway.core.access import Caller
from imagegw.gateway.core.periodic import Periodic
from imagegw.gateway.core.presence import Retirement
from imagegw.gateway.core.pulls import PullManager, split_image_name
from imagegw.gateway.records import ImageRecord
from imagegw.gateway.store.base import ImageStore
from imagegw.publish import Publisher, publisher_for

__all__ = ["Expirer", "ExpiryLoop", "check_interval"]

log = logging.getLogger(__name__)

#: The schedule runs at least this often and at most every MAX_INTERVAL seconds.
MIN_INTERVAL = 1.0
MAX_INTERVAL = 300.0


def check_interval(config: Config) -> float:
    """ExpirationCheckInterval, or min(ImageExpirationTimeout / 10, 300 s)."""
    if config.expiration_check_interval:
        return max(MIN_INTERVAL, config.expiration_check_interval)
    return max(MIN_INTERVAL, min(config.image_expiration_timeout / 10, MAX_INTERVAL))


class Expirer:
    def __init__(self, config: Config, store: ImageStore, pulls: PullManager, *,
                 publishers: Callable[[Platform], Publisher] = publisher_for,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.pulls = pulls
        self.publishers = publishers
        self.clock = clock
        self.retirement = Retirement(config, store, publishers=publishers)

    def expire_image(self, system: str, image_type: str, reference: str,
                     caller: Caller) -> list[ImageRecord]:
        """Expires the image a reference (every ACL's copy) or an id names, now."""
        self._require_admin(system, caller, "expire images")
        if image_type == "id":
            image_id, name = split_image_name(reference)
            candidates = [image for image in self.store.find_images(system, image_id)
                          if not name or image.name == name]
        else:
            normalized = self.pulls.normalize(system, image_type, reference)
            candidates = [image for pull in self.store.pulls_of(system, normalized)
                          if pull.image_id
                          and (image := self.store.get_image(system, pull.image_id,
                                                             pull.key.acl_key)) is not None]
        ready = [image for image in candidates if image.state == ImageState.READY]
        if not ready:
            raise ImageNotFound(f"no ready image {reference} on system {system} to expire")
        expired = [image for image in ready if self._expire(image, used_before=None)]
        if not expired:
            raise ImageNotFound(f"{reference} on {system} has a pull in flight; "
                                "expire it once the pull has finished")
        return expired

    def expire_unused(self, system: str, caller: Caller | None = None) -> list[ImageRecord]:
        """Expires every image of `system` unused for ImageExpirationTimeout.
        `caller` None is the gateway's own schedule."""
        if caller is not None:
            self._require_admin(system, caller, "run auto-expiry")
        self.config.platform(system)
        timeout = self.config.image_expiration_timeout
        if timeout <= 0:
            return []  # 0 turns expiry off
        cutoff = self.clock() - timeout
        return [image for image in self.store.expirable_images(system, cutoff)
                if self._expire(image, used_before=cutoff)]

    def expire_all_systems(self) -> int:
        count = 0
        for system in sorted(self.config.platforms):
            try:
                count += len(self.expire_unused(system))
            except ImageGatewayError as exc:
                log.warning("auto-expiry on %s failed: %s", system, exc)
        return count

    def _require_admin(self, system: str, caller: Caller, what: str) -> None:
        self.config.platform(system)
        if not caller.is_admin(system):
            raise PermissionDenied(f"only admins of system {system} may {what}",
                                   hint=f"ask one of Platforms.{system}.admins")

    def _expire(self, image: ImageRecord, *, used_before: float | None) -> bool:
        if not self.retirement.retire(image, used_before=used_before, why="expired"):
            return False
        for tag in image.tags:
            self.pulls.forget(image.system, tag)
        return True


class ExpiryLoop(Periodic):
    """Runs `Expirer.expire_all_systems` every `interval` seconds in a daemon thread."""

    def __init__(self, expirer: Expirer, interval: float) -> None:
        super().__init__("auto-expiry", interval, expirer.expire_all_systems,
                         done="auto-expiry removed %d images", logger=log)
        self.expirer = expirer
