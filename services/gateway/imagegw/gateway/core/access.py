"""Who is calling, as the core sees it, and what they may see.

`Caller` is built at the gRPC edge from the authenticated identity; every
authorisation decision in the core takes one. Visibility rule for private images:
the caller's uid is in the user ACL or one of their groups is in the group ACL
(the puller is always in the user ACL). Admins of a system see everything there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["ANONYMOUS_CALLER", "Caller"]


@dataclass(frozen=True)
class Caller:
    uid: int
    gid: int
    user: str
    groups: tuple[int, ...] = ()
    #: The systems whose admins list this caller (checked against that system's MUNGE).
    admin_of: frozenset[str] = field(default_factory=frozenset)

    @property
    def anonymous(self) -> bool:
        return self.uid < 0

    def is_admin(self, system: str) -> bool:
        return not self.anonymous and system in self.admin_of

    @property
    def viewer(self) -> tuple[int, tuple[int, ...]]:
        """(uid, gids) for store queries that filter by visibility."""
        return (self.uid, self.groups)

    def named_in(self, user_acl: Iterable[int], group_acl: Iterable[int]) -> bool:
        """Whether a private ACL names this caller (directly or by a group)."""
        if self.anonymous:
            return False
        return self.uid in set(user_acl) or bool(set(self.groups) & set(group_acl))

    def can_see(self, system: str, acl_key: str, user_acl: Iterable[int],
                group_acl: Iterable[int]) -> bool:
        """Public images, private ones naming the caller, and everything for admins."""
        return not acl_key or self.is_admin(system) or self.named_in(user_acl, group_acl)

    def can_use(self, acl_key: str, user_acl: Iterable[int], group_acl: Iterable[int]) -> bool:
        """Like can_see, without the admin override: what lookups resolve to."""
        return not acl_key or self.named_in(user_acl, group_acl)

    def label(self) -> str:
        return "anonymous" if self.anonymous else f"{self.user} (uid {self.uid})"


ANONYMOUS_CALLER = Caller(uid=-1, gid=-1, user="(anonymous)")
