"""Private-image ACLs, shared by the gateway and the worker.

`acl_key` names an ACL (the identity of a private pull and image: "" for public);
`acl_file_suffix` gives a private image its own file names on the image directory,
so the public and private copies of one image never share a meta file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["acl_file_suffix", "acl_key", "normalized_acl"]

#: Hex digits of the ACL hash in private file names: 48 bits, collisions need ~16M ACLs.
SUFFIX_DIGITS = 12


def normalized_acl(ids: Iterable[int]) -> tuple[int, ...]:
    """Sorted, without duplicates."""
    return tuple(sorted({int(i) for i in ids}))


def acl_key(user_acl: Iterable[int], group_acl: Iterable[int]) -> str:
    """"u:1000,1001;g:100" for a private ACL; "" for a public image."""
    users, groups = normalized_acl(user_acl), normalized_acl(group_acl)
    if not users and not groups:
        return ""
    return "u:{};g:{}".format(",".join(map(str, users)), ",".join(map(str, groups)))


def acl_file_suffix(user_acl: Iterable[int], group_acl: Iterable[int]) -> str:
    """"-<12 hex>" for a private ACL (added to the image id in file names); "" if public."""
    key = acl_key(user_acl, group_acl)
    if not key:
        return ""
    return "-" + hashlib.sha256(key.encode("ascii")).hexdigest()[:SUFFIX_DIGITS]
