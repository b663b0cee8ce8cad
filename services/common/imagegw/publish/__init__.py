"""Publishing finished images to a system's image directory, locally or over SSH.

`publisher_for(platform)` picks the implementation; all follow `Publisher` in base. A
remote system's images travel through the system's OpenSSH client (openssh.py).
"""

from __future__ import annotations

from imagegw.domain.config import Platform
from imagegw.domain.errors import ConfigError
from imagegw.publish.base import DirEntry, Publisher, is_temporary, temporary_name
from imagegw.publish.local import LocalPublisher
from imagegw.publish.openssh import OpenSshPublisher
from imagegw.publish.ssh import SshPublisher

__all__ = [
    "DirEntry",
    "LocalPublisher",
    "OpenSshPublisher",
    "Publisher",
    "SshPublisher",
    "is_temporary",
    "publisher_for",
    "temporary_name",
]


def publisher_for(platform: Platform) -> Publisher:
    """The publisher for a system: its local image directory or its SSH target."""
    if platform.access_type == "local":
        if not platform.image_dir:
            raise ConfigError(f"Platforms.{platform.name}.local.imageDir: required for local")
        return LocalPublisher(platform.image_dir)
    if platform.access_type == "remote":
        if platform.ssh is None:
            raise ConfigError(f"Platforms.{platform.name}.ssh: required for remote")
        return OpenSshPublisher(platform.ssh)
    raise ConfigError(
        f"Platforms.{platform.name}.accesstype: expected 'local' or 'remote', "
        f"got {platform.access_type!r}"
    )
