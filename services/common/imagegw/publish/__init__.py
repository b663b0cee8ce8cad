"""Publishing finished images to a system's image directory, locally or over SSH.

`publisher_for(platform)` picks the implementation; all follow `Publisher` in base. A
remote system's images travel through the system's OpenSSH client (openssh.py). The SSH
publishers (and paramiko, ~6 MiB of modules) are imported by `_ssh_publishers` only when
a process publishes to a remote system.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeGuard

from imagegw.domain.config import Platform
from imagegw.domain.errors import ConfigError
from imagegw.publish.base import DirEntry, Publisher, is_temporary, temporary_name
from imagegw.publish.local import LocalPublisher

if TYPE_CHECKING:
    from imagegw.publish.follow import FollowingPublish
    from imagegw.publish.openssh import OpenSshPublisher
    from imagegw.publish.ssh import SshPublisher

__all__ = [
    "DirEntry",
    "LocalPublisher",
    "OpenSshPublisher",
    "Publisher",
    "SshPublisher",
    "following_publish",
    "is_temporary",
    "publisher_for",
    "streams_while_written",
    "temporary_name",
]


def _ssh_publishers(system: str | None = None) -> ModuleType:
    """`imagegw.publish.openssh` (which holds `SshPublisher`'s module too), imported on
    first use: the one place that does."""
    try:
        from imagegw.publish import openssh
    except ImportError as exc:
        where = f"Platforms.{system}.accesstype" if system else "a remote system"
        raise ConfigError(f"{where}: the SSH publisher cannot be loaded: {exc}",
                          hint="install paramiko (pip install 'paramiko>=3.4')") from exc
    return openssh


def __getattr__(name: str) -> Any:
    if name == "OpenSshPublisher":  # `from imagegw.publish import OpenSshPublisher`
        return _ssh_publishers().OpenSshPublisher
    if name == "SshPublisher":
        return _ssh_publishers().SshPublisher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def streams_while_written(publisher: Publisher) -> TypeGuard[OpenSshPublisher]:
    """Whether `publisher` can take an image while the converter writes it (the OpenSSH
    publisher, through `following_publish()`); asking about a local one loads no SSH code."""
    if isinstance(publisher, LocalPublisher):
        return False
    return isinstance(publisher, _ssh_publishers().OpenSshPublisher)


def following_publish() -> type[FollowingPublish]:
    """`FollowingPublish` (follow.py: an image streamed to a remote system while it is
    written), imported on first use along with the SSH publishers."""
    _ssh_publishers()
    from imagegw.publish.follow import FollowingPublish

    return FollowingPublish


def publisher_for(platform: Platform) -> Publisher:
    """The publisher for a system: its local image directory or its SSH target."""
    if platform.access_type == "local":
        if not platform.image_dir:
            raise ConfigError(f"Platforms.{platform.name}.local.imageDir: required for local")
        return LocalPublisher(platform.image_dir)
    if platform.access_type == "remote":
        if platform.ssh is None:
            raise ConfigError(f"Platforms.{platform.name}.ssh: required for remote")
        publisher: Publisher = _ssh_publishers(platform.name).OpenSshPublisher(platform.ssh)
        return publisher
    raise ConfigError(
        f"Platforms.{platform.name}.accesstype: expected 'local' or 'remote', "
        f"got {platform.access_type!r}"
    )
