"""The signed payload ("simple signing" JSON), read as strictly as containers/image reads it.

    {"critical": {"type": ..., "image": {"docker-manifest-digest": ...},
                  "identity": {"docker-reference": ...}},
     "optional": {"creator": ..., "timestamp": ...}}

Missing, unknown or duplicated fields in `critical` make the signature invalid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .gpg import SignatureInvalid

SIMPLE_SIGNING_TYPE = "atomic container signature"
SIGSTORE_TYPE = "cosign container image signature"


@dataclass(frozen=True)
class SignedClaims:
    manifest_digest: str
    docker_reference: str


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise SignatureInvalid(f"the payload repeats the field {key!r}")
        result[key] = value
    return result


def _exact(value: Any, fields: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SignatureInvalid(f"the payload's {where} is not an object")
    if set(value) != set(fields):
        raise SignatureInvalid(f"the payload's {where} has fields {sorted(value)}, "
                               f"not {sorted(fields)}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SignatureInvalid(f"the payload's {where} is not a string")
    return value


def parse_payload(data: bytes, expected_type: str) -> SignedClaims:
    """The claims of a payload of `expected_type`; SignatureInvalid when malformed."""
    try:
        top = json.loads(data, object_pairs_hook=_pairs)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SignatureInvalid("the signed payload is not JSON") from exc
    top = _exact(top, ("critical", "optional"), "top level")
    optional = top["optional"]
    if not (isinstance(optional, dict) or (optional is None and expected_type == SIGSTORE_TYPE)):
        raise SignatureInvalid("the payload's optional part is not an object")
    if isinstance(optional, dict):
        if "creator" in optional:
            _string(optional["creator"], "optional.creator")
        timestamp = optional.get("timestamp")
        if timestamp is not None and (not isinstance(timestamp, int | float)
                                      or isinstance(timestamp, bool)
                                      or int(timestamp) != timestamp):
            raise SignatureInvalid("the payload's optional.timestamp is not an integer")
    critical = _exact(top["critical"], ("type", "image", "identity"), "critical part")
    kind = _string(critical["type"], "critical.type")
    if kind != expected_type:
        raise SignatureInvalid(f"the payload's critical.type is {kind!r}, not {expected_type!r}")
    image = _exact(critical["image"], ("docker-manifest-digest",), "critical.image")
    identity = _exact(critical["identity"], ("docker-reference",), "critical.identity")
    return SignedClaims(
        manifest_digest=_string(image["docker-manifest-digest"],
                                "critical.image.docker-manifest-digest"),
        docker_reference=_string(identity["docker-reference"],
                                 "critical.identity.docker-reference"),
    )
