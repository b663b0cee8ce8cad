"""The verdict: does the policy accept this image, judged on its exact manifest bytes?

As containers/image decides it: the scope's requirements must all hold; `reject`
never does; a signature requirement holds when at least one signature verifies with
its keys, signs this manifest's digest, and claims an identity its signedIdentity
accepts. A refusal is `SignatureRefused` (PermissionDenied) naming the policy, the
scope, the requirement and what failed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

from imagegw.domain.errors import PermissionDenied
from imagegw.domain.model import ImageSigner, ImageTrust

from .dockerref import DockerRef
from .gpg import SignatureInvalid
from .payload import SIGSTORE_TYPE, SIMPLE_SIGNING_TYPE, SignedClaims, parse_payload
from .policy import Policy, Requirement, Scope
from .sources import FoundSignature, Signatures

_DIGEST = re.compile(r"^(sha256|sha384|sha512):([a-f0-9]+)$")


class SignatureRefused(PermissionDenied):
    """The site's signature policy does not accept the image."""


#: Who signed, and the verdict: plain domain data the records keep.
Signer = ImageSigner
Verdict = ImageTrust


def manifest_matches(manifest: bytes, claimed: str) -> bool:
    match = _DIGEST.match(claimed)
    if match is None:
        return False
    return hashlib.new(match.group(1), manifest).hexdigest() == match.group(2)


def judge(policy: Policy, image: DockerRef, manifest: bytes,
          signatures: Callable[[], Signatures]) -> Verdict:
    """The verdict for `image` whose manifest is `manifest`; `signatures` is called at most
    once, and only when the scope has a signature requirement."""
    scope = policy.scope_for(image)
    collected: list[Signatures] = []

    def found() -> Signatures:
        if not collected:
            collected.append(signatures())
        return collected[0]

    signers = []
    for requirement in scope.requirements:
        if requirement.type == "insecureAcceptAnything":
            continue
        if requirement.type == "reject":
            raise _refusal(policy, image, scope, requirement, "this scope rejects every image")
        signers.append(_signature_holds(policy, image, manifest, scope, requirement, found()))
    return Verdict(policy.digest, scope.name, tuple(signers))


def _signature_holds(policy: Policy, image: DockerRef, manifest: bytes, scope: Scope,
                     requirement: Requirement, signatures: Signatures) -> Signer:
    if not signatures.found:
        where = ", ".join(signatures.looked) if signatures.looked else (
            "nowhere: SignatureRegistriesDir names no lookaside storage or sigstore "
            "attachments for this image")
        raise _refusal(policy, image, scope, requirement,
                       f"no signature found (looked in {where})")
    reasons = []
    for number, signature in enumerate(signatures.found, 1):
        try:
            return _accepted(requirement, image, manifest, signature)
        except SignatureInvalid as exc:
            reasons.append(f"signature {number} ({signature.where}): {exc.reason}")
    raise _refusal(policy, image, scope, requirement, "no signature is accepted: "
                   + "; ".join(reasons))


def _accepted(requirement: Requirement, image: DockerRef, manifest: bytes,
              signature: FoundSignature) -> Signer:
    if requirement.type == "signedBy":
        if signature.kind != "simple" or requirement.keys is None:
            raise SignatureInvalid("a sigstore signature; signedBy needs a GPG signature")
        payload, fingerprint = requirement.keys.verify(signature.data)
        claims = parse_payload(payload, SIMPLE_SIGNING_TYPE)
        kind = "gpg"
    else:
        if signature.kind != "sigstore" or requirement.sigstore_key is None:
            raise SignatureInvalid("a GPG signature; sigstoreSigned needs a sigstore signature")
        if not signature.sigstore_signature:
            raise SignatureInvalid("the attachment has no dev.cosignproject.cosign/signature")
        requirement.sigstore_key.verify(signature.data, signature.sigstore_signature)
        claims = parse_payload(signature.data, SIGSTORE_TYPE)
        fingerprint = requirement.sigstore_key.fingerprint
        kind = "sigstore"
    _check_claims(requirement, image, manifest, claims)
    return Signer(kind, fingerprint, claims.docker_reference)


def _check_claims(requirement: Requirement, image: DockerRef, manifest: bytes,
                  claims: SignedClaims) -> None:
    if not manifest_matches(manifest, claims.manifest_digest):
        raise SignatureInvalid(f"a signature for another image (digest "
                               f"{claims.manifest_digest})")
    if not requirement.identity.accepts(image, claims.docker_reference):
        raise SignatureInvalid(f"a signature for another identity ({claims.docker_reference}; "
                               f"{requirement.identity.describe()} does not accept it for "
                               f"{image})")


def _refusal(policy: Policy, image: DockerRef, scope: Scope, requirement: Requirement,
             reason: str) -> SignatureRefused:
    return SignatureRefused(
        f"{image} is refused by the signature policy {policy.path}: scope {scope.name}, "
        f"requirement {requirement.where} {requirement.describe()}: {reason}",
        hint="ask the site's administrators which images are trusted (docs/trust.md)")
