"""Sigstore signatures with a public key, checked with `cryptography`.

A sigstore signature is the base64 signature (annotation
`dev.cosignproject.cosign/signature`) over the payload bytes: ECDSA or RSA
PKCS#1 v1.5 over SHA-256, or ed25519, as containers/image and cosign make them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

from .gpg import SignatureInvalid

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PAYLOAD_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"


@dataclass(frozen=True, eq=False)
class SigstoreKey:
    key: Any
    #: sha256 of the key's DER SubjectPublicKeyInfo, hex: what we record as the signer.
    fingerprint: str

    def verify(self, payload: bytes, encoded_signature: str) -> None:
        # cryptography (~8 MiB once imported) is loaded by a policy with sigstore keys only.
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

        try:
            signature = base64.b64decode(encoded_signature, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SignatureInvalid("the signature annotation is not valid base64") from exc
        try:
            if isinstance(self.key, ec.EllipticCurvePublicKey):
                self.key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
            elif isinstance(self.key, rsa.RSAPublicKey):
                self.key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
            else:
                self.key.verify(signature, payload)
        except InvalidSignature as exc:
            raise SignatureInvalid("the signature was not made by the trusted key "
                                   f"(sha256 {self.fingerprint[:16]}...)") from exc


def load_sigstore_key(data: bytes) -> SigstoreKey:
    """A PEM public key (ECDSA, RSA or ed25519); ValueError otherwise."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError("not a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey
                      | ed25519.Ed25519PublicKey):
        raise ValueError(f"unsupported public key type {type(key).__name__} "
                         "(ECDSA, RSA or ed25519)")
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return SigstoreKey(key, hashlib.sha256(der).hexdigest())
