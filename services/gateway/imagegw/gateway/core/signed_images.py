"""The signature policy's verdict kept in an image record, and whether it still stands.

The verdict (policy digest, scope, signers) lives in `ImageRecord.extra` under one key,
as JSON, so every store keeps it without a schema change. A READY image judged by
another policy than the system's current one is not answered from its record: a pull
asks a worker to judge the same manifest by the current policy first.
"""

from __future__ import annotations

import json

from imagegw.domain.model import ImageSigner, ImageTrust
from imagegw.gateway.records import ImageRecord

TRUST_KEY = "signature_trust"


def trust_extra(trust: ImageTrust | None) -> dict[str, str]:
    if trust is None:
        return {}
    return {TRUST_KEY: json.dumps({
        "policy_digest": trust.policy_digest, "scope": trust.scope,
        "signers": [[s.kind, s.fingerprint, s.identity] for s in trust.signers],
    }, separators=(",", ":"))}


def trust_of(image: ImageRecord) -> ImageTrust | None:
    text = image.extra.get(TRUST_KEY)
    if not text:
        return None
    data = json.loads(text)
    return ImageTrust(data["policy_digest"], data["scope"],
                      tuple(ImageSigner(*signer) for signer in data["signers"]))


def judged_by_other_policy(image: ImageRecord, current_digest: str) -> bool:
    """Whether the image was accepted under a policy other than `current_digest` ("" for
    none). Imported images never came from a registry: no policy judges them."""
    if "imported_by" in image.extra:
        return False
    trust = trust_of(image)
    return (trust.policy_digest if trust is not None else "") != current_digest
