"""What the gateway answers about an image: a pull record and/or an image record,
combined into one status. Plain data; the API layer turns it into protobuf."""

from __future__ import annotations

from dataclasses import dataclass

from imagegw.domain.model import Failure, ImageState, Progress
from imagegw.gateway.records import ImageRecord, PullRecord


@dataclass(frozen=True)
class ImageStatus:
    system: str
    reference: str
    state: ImageState
    pull: PullRecord | None = None
    image: ImageRecord | None = None
    progress: Progress | None = None
    #: Seconds after last use when the image expires (from the config).
    expiration_timeout: float = 0.0

    @property
    def failure(self) -> Failure | None:
        if self.pull is not None and self.pull.state == ImageState.FAILED:
            return self.pull.failure
        return None

    @property
    def expire_time(self) -> float:
        if self.image is None or not self.expiration_timeout:
            return 0.0
        return self.image.last_used + self.expiration_timeout


def pull_status(pull: PullRecord, image: ImageRecord | None, *, expiration: float,
                progress: Progress | None = None) -> ImageStatus:
    """The status a pull stream reports: the pull's own state."""
    return ImageStatus(
        system=pull.key.system, reference=pull.key.reference, state=pull.state, pull=pull,
        image=image,
        progress=progress or pull.progress, expiration_timeout=expiration,
    )


def lookup_status(pull: PullRecord | None, image: ImageRecord | None, *, reference: str,
                  system: str, expiration: float) -> ImageStatus:
    """The status a lookup reports: a usable image wins over a pull in flight."""
    if image is not None:
        return ImageStatus(system=system, reference=reference, state=image.state, pull=pull,
                           image=image, expiration_timeout=expiration)
    assert pull is not None
    return ImageStatus(system=system, reference=reference, state=pull.state, pull=pull,
                       progress=pull.progress, expiration_timeout=expiration)
