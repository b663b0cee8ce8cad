"""Signed test images made by tools nobody here wrote, and skopeo's verdict on them.

    keys = GpgKey.generate(tmp / "alice", "alice")           # gpg --quick-gen-key
    site = SignatureSite(tmp / "sigs", registry.host)        # registries.d + file:// lookaside
    site.copy_signed(keys, registry, "src/app:1", "signed/app:1")   # skopeo copy --sign-by
    site.skopeo_accepts(policy_file, "signed/app:1")         # skopeo --policy ... copy

Sigstore signatures are made with `cryptography` in containers/image's format (Debian's
skopeo cannot make them): the payload as a layer of an OCI manifest tagged
`sha256-<hex>.sig`, the base64 signature in its `dev.cosignproject.cosign/signature`
annotation.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.images import OCI_MANIFEST, digest_of, push_blob, push_manifest

SKOPEO = "skopeo"
TIMEOUT = 120


@dataclass(frozen=True)
class GpgKey:
    home: Path
    fingerprint: str
    #: The armored public key, as a site would install it.
    public_key: Path

    @classmethod
    def generate(cls, home: Path, name: str) -> GpgKey:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
               "--passphrase", ""]
        subprocess.run([*gpg, "--quick-gen-key", f"{name} <{name}@example.invalid>",
                        "rsa2048", "sign", "never"], check=True, capture_output=True,
                       timeout=TIMEOUT)
        listing = subprocess.run([*gpg, "--with-colons", "--list-keys"], check=True,
                                 capture_output=True, text=True, timeout=TIMEOUT).stdout
        fingerprint = next(line.split(":")[9] for line in listing.splitlines()
                           if line.startswith("fpr:"))
        public = home / f"{name}.pub.asc"
        public.write_bytes(subprocess.run([*gpg, "--armor", "--export", fingerprint],
                                          check=True, capture_output=True,
                                          timeout=TIMEOUT).stdout)
        return cls(home, fingerprint, public)

    def stop_agent(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"],
                       capture_output=True, timeout=TIMEOUT, check=False)


class SignatureSite:
    """A registries.d whose lookaside (read and staging) is one file:// directory, for the
    test registry at `host`, with sigstore attachments turned on; signatures are read from
    `lookaside_url` instead when given (an http:// server of that directory)."""

    def __init__(self, root: Path, host: str, *, lookaside_url: str = "") -> None:
        self.root = root
        self.host = host
        self.lookaside = root / "lookaside"
        self.registries_d = root / "registries.d"
        self.lookaside.mkdir(parents=True, exist_ok=True)
        self.registries_d.mkdir(parents=True, exist_ok=True)
        (self.registries_d / "test.yaml").write_text(
            f"docker:\n  {host}:\n    lookaside: {lookaside_url or f'file://{self.lookaside}'}\n"
            f"    lookaside-staging: file://{self.lookaside}\n"
            "    use-sigstore-attachments: true\n")

    def _skopeo(self, *args: str, gnupghome: Path | None = None
                ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "GNUPGHOME": str(gnupghome)} if gnupghome else None
        return subprocess.run([SKOPEO, "--registries.d", str(self.registries_d), *args],
                              capture_output=True, text=True, timeout=TIMEOUT, env=env,
                              check=False)

    def copy_signed(self, key: GpgKey | None, source: str, dest: str, *,
                    all_platforms: bool = False) -> None:
        """skopeo copy docker://host/source docker://host/dest [--sign-by key] [--all]."""
        sign = ["--sign-by", key.fingerprint] if key is not None else []
        done = self._skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                            *sign, *(["--all"] if all_platforms else []), f"docker://{self.host}/{source}",
                            f"docker://{self.host}/{dest}",
                            gnupghome=key.home if key is not None else None)
        if done.returncode != 0:
            raise AssertionError(f"skopeo copy failed: {done.stderr}")

    def skopeo_accepts(self, policy: Path, reference: str, scratch: Path) -> bool:
        """What `skopeo --policy P --registries.d D copy docker://... dir:...` decides."""
        target = scratch / f"skopeo-dir-{len(list(scratch.glob('skopeo-dir-*')))}"
        done = self._skopeo("--policy", str(policy), "copy", "--src-tls-verify=false",
                            f"docker://{self.host}/{reference}", f"dir:{target}")
        if done.returncode != 0 and "Source image rejected" not in done.stderr:
            raise AssertionError(f"skopeo failed for another reason: {done.stderr}")
        return done.returncode == 0

    def signature_dir(self, repository: str, manifest_digest: str) -> Path:
        algorithm, _, hexdigest = manifest_digest.partition(":")
        return self.lookaside / f"{repository}@{algorithm}={hexdigest}"


def sigstore_payload(identity: str, manifest_digest: str) -> bytes:
    """The payload containers/image and cosign sign."""
    return json.dumps({
        "critical": {"identity": {"docker-reference": identity},
                     "image": {"docker-manifest-digest": manifest_digest},
                     "type": "cosign container image signature"},
        "optional": None,
    }).encode()


def new_sigstore_key(directory: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    """An EC P-256 key pair; the public key written as PEM, as a site installs it."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = directory / f"{name}.pub.pem"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, public


def attach_sigstore(registry_url: str, repository: str, manifest_digest: str,
                    payloads: list[tuple[bytes, ec.EllipticCurvePrivateKey]]) -> None:
    """Pushes the `sha256-<hex>.sig` manifest holding each payload signed by its key."""
    layers = []
    for payload, key in payloads:
        signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
        digest = push_blob(registry_url, repository, payload)
        layers.append({"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                       "digest": digest, "size": len(payload),
                       "annotations": {"dev.cosignproject.cosign/signature":
                                       base64.b64encode(signature).decode()}})
    config = b"{}"
    config_digest = push_blob(registry_url, repository, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": layers,
    }).encode()
    push_manifest(registry_url, repository, manifest_digest.replace(":", "-") + ".sig",
                  manifest, OCI_MANIFEST)
    assert digest_of(manifest)
