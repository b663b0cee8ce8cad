"""Page tokens and page sizes for list_images, shared by every store backend.

A token is the position after the last image of a page (its last_pull, id, acl_key),
so pages stay stable when images are inserted meanwhile (keyset paging).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from imagegw.domain.errors import InvalidRequest
from imagegw.gateway.records import ImageRecord

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Cursor:
    """Images sort by last_pull descending, then image_id and acl_key ascending; a
    page continues strictly after (last_pull, image_id, acl_key)."""

    last_pull: float
    image_id: str
    acl_key: str = ""


def page_limit(page_size: int) -> int:
    """0 means the default; sizes above the maximum are capped (AIP-158)."""
    if page_size < 0:
        raise InvalidRequest(f"page_size must not be negative, got {page_size}")
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)


def encode_token(cursor: Cursor) -> str:
    raw = json.dumps([cursor.last_pull, cursor.image_id, cursor.acl_key]).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_token(token: str) -> Cursor | None:
    """The cursor in `token`; None for the empty token (the first page)."""
    if not token:
        return None
    try:
        # Tokens from before acl_key was part of an image's identity have two fields.
        last_pull, image_id, *rest = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        acl_key = rest[0] if rest else ""
        if (not isinstance(image_id, str) or not isinstance(acl_key, str) or len(rest) > 1
                or not isinstance(last_pull, int | float)):
            raise ValueError("unexpected token contents")
    except (ValueError, TypeError, binascii.Error, UnicodeError) as exc:
        raise InvalidRequest(
            "invalid page_token", hint="pass the next_page_token of the previous page unchanged"
        ) from exc
    return Cursor(float(last_pull), image_id, acl_key)


def cursor_of(image: ImageRecord) -> Cursor:
    """Where the page after `image` starts."""
    return Cursor(image.last_pull, image.image_id, image.acl_key)


def page(items: list[T], limit: int, cursor_of: Callable[[T], Cursor]) -> tuple[list[T], str]:
    """The first `limit` of `items` (fetched with limit + 1 to see whether more follow)
    and the token of the next page ("" on the last one)."""
    if len(items) <= limit:
        return items, ""
    kept = items[:limit]
    return kept, encode_token(cursor_of(kept[-1]))
