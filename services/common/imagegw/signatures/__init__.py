"""Images the site trusts: containers-policy.json(5) for the docker transport.

The policy (`policy`), where signatures live (`registries_d`, `sources`), their
verification (`gpg` through the system's gpgv, `sigstore` through `cryptography`) and
the verdict (`evaluate`), loaded per system from the configuration (`site`).
No grpc here.
"""

from .evaluate import SignatureRefused, Signer, Verdict
from .policy import Policy, PolicyFormatError, load_policy
from .site import SiteTrust, SystemTrust, docker_identity, load_site_trust

__all__ = [
    "Policy", "PolicyFormatError", "SignatureRefused", "Signer", "SiteTrust", "SystemTrust",
    "Verdict", "docker_identity", "load_policy", "load_site_trust",
]
