"""Who may read a private image's files where the runtime cannot enforce its ACL.

Shifter's setuid runtime reads USERACL/GROUPACL from the meta file, so Shifter-only
systems publish every file 0644. enroot, Pyxis, Apptainer and SingularityCE open the
image as the user and have no ACL of their own: on a system publishing for them, a
private image's files (`.squashfs`, `.sif`) are 0600 (owned by the publishing account)
with a POSIX access ACL giving read to each uid of its user ACL and each gid of its group
ACL (Shifter, as root, still reads them). The meta file is 0600 like every private one.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from imagegw.domain.config import Platform
from imagegw.domain.runtimes import SHIFTER

__all__ = ["Readers", "readers_for"]

#: The mode of a private image's files before its ACL gives readers access.
PRIVATE_MODE = 0o600
#: Linux's system.posix_acl_access value: a version header, then (tag, perm, id) entries
#: sorted by tag then id (from the kernel's posix_acl_xattr.h).
ACL_XATTR = "system.posix_acl_access"
_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF
_READ, _READ_WRITE, _NONE = 4, 6, 0


@dataclass(frozen=True)
class Readers:
    """The uids and gids that may read a private image's files."""

    users: tuple[int, ...]
    groups: tuple[int, ...]

    def posix_acl(self) -> bytes:
        """The binary `system.posix_acl_access` value."""
        entries = [(_USER_OBJ, _READ_WRITE, _UNDEFINED_ID)]
        entries += [(_USER, _READ, uid) for uid in sorted(set(self.users))]
        entries.append((_GROUP_OBJ, _NONE, _UNDEFINED_ID))
        entries += [(_GROUP, _READ, gid) for gid in sorted(set(self.groups))]
        entries += [(_MASK, _READ, _UNDEFINED_ID), (_OTHER, _NONE, _UNDEFINED_ID)]
        return struct.pack("<I", _VERSION) + b"".join(
            struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in entries)

    def setfacl_spec(self) -> str:
        """The same ACL as `setfacl --set` takes it (numeric ids only: safe to quote)."""
        parts = ["u::rw-", *(f"u:{uid}:r--" for uid in sorted(set(self.users))), "g::---",
                 *(f"g:{gid}:r--" for gid in sorted(set(self.groups))), "m::r--", "o::---"]
        return ",".join(parts)


def readers_for(platform: Platform, user_acl: Sequence[int], group_acl: Sequence[int]
                ) -> Readers | None:
    """The readers of a private image on `platform`; None when its files stay 0644
    (a public image, or a system that publishes for Shifter only)."""
    if not (user_acl or group_acl) or set(platform.runtimes) <= {SHIFTER}:
        return None
    return Readers(tuple(int(uid) for uid in user_acl), tuple(int(gid) for gid in group_acl))
