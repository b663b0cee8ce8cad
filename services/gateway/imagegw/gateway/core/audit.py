"""The audit log: one JSON line per state-changing call on logger `imagegw.audit`.

Who (uid, user), what (action), where (system), which image, and the result. Only
the fields passed in are written, and callers never pass secrets: registry
passwords and MUNGE credentials have no field here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from imagegw.domain.errors import ImageGatewayError
from imagegw.gateway.core.access import Caller

__all__ = ["AUDIT_LOGGER", "audited", "record"]

AUDIT_LOGGER = "imagegw.audit"
audit_log = logging.getLogger(AUDIT_LOGGER)


def record(action: str, caller: Caller, *, system: str = "", image: str = "",
           result: str = "ok", **details: Any) -> None:
    """Writes one audit line."""
    entry: dict[str, Any] = {
        "time": round(time.time(), 3), "action": action, "uid": caller.uid,
        "user": caller.user, "system": system, "image": image, "result": result,
    }
    entry.update({k: v for k, v in details.items() if v not in (None, "")})
    audit_log.info(json.dumps(entry, sort_keys=False, separators=(",", ":"), default=str))


@contextlib.contextmanager
def audited(action: str, caller: Caller, *, system: str = "", image: str = "",
            **known: Any) -> Iterator[dict[str, Any]]:
    """Audits the block: yields a dict of details (starting with `known`) the block may
    add to (e.g. the image id); the line says "ok", or the error class and message
    when the block raised."""
    details: dict[str, Any] = dict(known)
    try:
        yield details
    except ImageGatewayError as exc:
        record(action, caller, system=system, image=details.pop("image", image),
               result=f"{type(exc).__name__}: {exc.message}", **details)
        raise
    except Exception as exc:
        record(action, caller, system=system, image=details.pop("image", image),
               result=f"internal error: {type(exc).__name__}", **details)
        raise
    record(action, caller, system=system, image=details.pop("image", image), **details)
