"""Page tokens and page sizes for list_images, shared by every store backend.

A token is the position after the last image of a page (its last_pull and id),
so pages stay stable when images are inserted meanwhile (keyset paging).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from imagegw.errors import InvalidRequest

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Cursor:
    """Images sort by last_pull descending, then image_id ascending; a page
    continues strictly after (last_pull, image_id)."""

    last_pull: float
    image_id: str


def page_limit(page_size: int) -> int:
    """0 means the default; sizes above the maximum are capped (AIP-158)."""
    if page_size < 0:
        raise InvalidRequest(f"page_size must not be negative, got {page_size}")
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)


def encode_token(cursor: Cursor) -> str:
    raw = json.dumps([cursor.last_pull, cursor.image_id]).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_token(token: str) -> Cursor | None:
    """The cursor in `token`; None for the empty token (the first page)."""
    if not token:
        return None
    try:
        last_pull, image_id = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        if not isinstance(image_id, str) or not isinstance(last_pull, int | float):
            raise ValueError("unexpected token contents")
    except (ValueError, TypeError, binascii.Error, UnicodeError) as exc:
        raise InvalidRequest(
            "invalid page_token", hint="pass the next_page_token of the previous page unchanged"
        ) from exc
    return Cursor(float(last_pull), image_id)
