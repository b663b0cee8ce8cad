"""The site's signature policies, per system, as the configuration names them.

`load_site_trust(config)` loads `SignaturePolicy`, each `Platforms.<system>.signaturePolicy`
and `SignatureRegistriesDir` once (at start-up), failing with the file and key on any
problem. `SystemTrust.judge` is what the worker calls on a resolved manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from imagegw.domain.config import DOCKER_HUB_HOSTS, Config
from imagegw.domain.reference import ImageReference

from .dockerref import DOCKER_HUB, DockerRef
from .evaluate import Verdict, judge
from .policy import Policy, load_policy
from .registries_d import SignatureStorage, load_registries_dir
from .sources import BlobSource, collect


def docker_identity(reference: ImageReference) -> DockerRef:
    """The reference as skopeo and podman name the same image: a Location's URL gives its
    host[:port], Docker Hub is docker.io."""
    host = urlsplit(reference.registry_url).netloc
    if host in DOCKER_HUB_HOSTS or reference.location in DOCKER_HUB_HOSTS:
        host = DOCKER_HUB
    return DockerRef(f"{host}/{reference.repository}", reference.tag, reference.digest)


@dataclass(frozen=True)
class SystemTrust:
    policy: Policy
    storage: SignatureStorage

    @property
    def digest(self) -> str:
        return self.policy.digest

    def judge(self, reference: ImageReference, manifest: bytes, manifest_digest: str,
              registry: BlobSource) -> Verdict:
        image = docker_identity(reference)
        return judge(self.policy, image, manifest,
                     lambda: collect(image, manifest_digest, self.storage, registry))


@dataclass(frozen=True)
class SiteTrust:
    systems: dict[str, SystemTrust] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def for_system(self, system: str) -> SystemTrust | None:
        return self.systems.get(system)

    def policy_digest(self, system: str) -> str:
        """The digest of the policy a system's images are judged by ("" when none)."""
        trust = self.systems.get(system)
        return trust.digest if trust is not None else ""


def load_site_trust(config: Config) -> SiteTrust:
    storage = (load_registries_dir(config.signature_registries_dir)
               if config.signature_registries_dir else SignatureStorage())
    loaded: dict[str, Policy] = {}

    def policy(path: str) -> Policy:
        if path not in loaded:
            loaded[path] = load_policy(path)
        return loaded[path]

    systems = {}
    for name, platform in config.platforms.items():
        path = platform.signature_policy or config.signature_policy
        if path:
            systems[name] = SystemTrust(policy(path), storage)
    warnings = [w for p in loaded.values() for w in p.warnings]
    if loaded and not config.signature_registries_dir and any(
            p.needs_signatures for p in loaded.values()):
        warnings.append("SignatureRegistriesDir: not set, so no signature can be found; "
                        "signedBy and sigstoreSigned requirements refuse every image")
    return SiteTrust(systems, tuple(warnings))
