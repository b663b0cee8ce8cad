"""The worker's side of the signature policy: one check per job, on the manifest the job
resolved, before any blob is fetched; the verdict goes into the job's result.

Every verdict is also written on the audit logger (`imagegw.audit`) as one JSON line:
action "signature-check", the system, the image and its manifest digest, the policy's
digest and scope, and the signers or the reason for the refusal.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace

from imagegw.domain.errors import ConfigError
from imagegw.domain.model import BuildJob, BuildResult, ImageTrust
from imagegw.domain.reference import ImageReference
from imagegw.signatures import SignatureRefused, SiteTrust
from imagegw.signatures.sources import BlobSource

audit_log = logging.getLogger("imagegw.audit")


class SignatureCheck:
    """Called with (manifest bytes, digest) by resolve_image / build_ready_made."""

    def __init__(self, site: SiteTrust, job: BuildJob, reference: ImageReference,
                 registry: BlobSource) -> None:
        self.trust = site.for_system(job.system)
        self.job = job
        self.reference = reference
        self.registry = registry
        self.verdict: ImageTrust | None = None
        ours = site.policy_digest(job.system)
        if job.policy_digest and job.policy_digest != ours:
            raise ConfigError(
                f"this worker judges images for system {job.system} by signature policy "
                f"{ours or '(none)'}, the gateway by {job.policy_digest}",
                hint="give the gateway and every worker the same SignaturePolicy and keys, "
                     "and restart them")

    def __call__(self, manifest: bytes, digest: str) -> None:
        if self.trust is None:
            return
        try:
            self.verdict = self.trust.judge(self.reference, manifest, digest, self.registry)
        except SignatureRefused as exc:
            self._audit(digest, result=f"refused: {exc.message}")
            raise
        self._audit(digest, result="accepted", scope=self.verdict.scope, signers=[
            {"kind": s.kind, "fingerprint": s.fingerprint, "identity": s.identity}
            for s in self.verdict.signers])

    def stamp(self, result: BuildResult) -> BuildResult:
        """The result with the verdict the job was accepted by."""
        return result if self.verdict is None else replace(result, trust=self.verdict)

    def _audit(self, digest: str, **details: object) -> None:
        assert self.trust is not None
        entry = {"time": round(time.time(), 3), "action": "signature-check",
                 "system": self.job.system, "image": str(self.reference), "job": self.job.job_id,
                 "manifest_digest": digest, "policy": self.trust.policy.path,
                 "policy_digest": self.trust.digest, **details}
        audit_log.info(json.dumps(entry, separators=(",", ":"), default=str))
