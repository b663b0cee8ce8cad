"""Who the caller is once authenticated, and whether a system treats them as an admin.

`Identity` is a plain value; `Identity.from_uid` is the one place that asks the host's
user database (pwd, getgrouplist) to fill in a name and supplementary groups.
"""

from __future__ import annotations

import logging
import os
import pwd
from dataclasses import dataclass

from imagegw.domain.config import Platform

__all__ = ["ANONYMOUS", "Identity", "is_admin"]

log = logging.getLogger(__name__)

#: Not a valid POSIX user name, so it can never equal a configured admin.
ANONYMOUS_NAME = "(anonymous)"


@dataclass(frozen=True)
class Identity:
    """An authenticated caller (or ANONYMOUS, which has uid and gid -1)."""

    uid: int
    gid: int
    user: str
    groups: tuple[int, ...]

    @property
    def is_anonymous(self) -> bool:
        return self.uid < 0

    @classmethod
    def from_uid(cls, uid: int, gid: int) -> Identity:
        """The identity of a verified uid/gid, named from the host's user database.

        An unknown uid is named "uid<N>" and has only its primary group.
        """
        if uid < 0 or gid < 0:
            raise ValueError(f"uid and gid must not be negative (got {uid}, {gid})")
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            return cls(uid=uid, gid=gid, user=f"uid{uid}", groups=(gid,))
        try:
            groups = os.getgrouplist(user, gid)
        except OSError as exc:
            log.warning("cannot list the groups of %s: %s", user, exc)
            groups = [gid]
        return cls(uid=uid, gid=gid, user=user, groups=_primary_first(gid, groups))


ANONYMOUS = Identity(uid=-1, gid=-1, user=ANONYMOUS_NAME, groups=())


def is_admin(identity: Identity, platform: Platform) -> bool:
    """Whether the caller's user name is exactly one of the system's `admins`."""
    if identity.is_anonymous:
        return False
    # tuple(): even if admins were a bare string, compare whole names, never substrings.
    return identity.user in tuple(platform.admins)


def _primary_first(gid: int, groups: list[int]) -> tuple[int, ...]:
    """The primary group first, then the others once each, in their order."""
    return tuple(dict.fromkeys([gid, *groups]))
