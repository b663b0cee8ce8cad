"""Protobuf <-> domain conversions shared by the gateway and the worker (edge code)."""

from __future__ import annotations

import grpc

from imagegw.domain.model import (
    BuildJob,
    BuildResult,
    Failure,
    ImageMetadata,
    ImageSigner,
    ImageTrust,
    Progress,
    RegistryCredentials,
    Stage,
)
from imagegw.rpc.status import kind_for_status, status_for_kind
from imagegw.v1 import image_pb2, worker_service_pb2


def metadata_to_proto(meta: ImageMetadata) -> image_pb2.ImageMetadata:
    return image_pb2.ImageMetadata(
        env=list(meta.env), entrypoint=list(meta.entrypoint), cmd=list(meta.cmd),
        workdir=meta.workdir, user=meta.user, labels=dict(meta.labels),
    )


def metadata_from_proto(msg: image_pb2.ImageMetadata) -> ImageMetadata:
    return ImageMetadata(
        env=tuple(msg.env), entrypoint=tuple(msg.entrypoint), cmd=tuple(msg.cmd),
        workdir=msg.workdir, user=msg.user, labels=dict(msg.labels),
    )


def progress_to_proto(p: Progress) -> image_pb2.Progress:
    return image_pb2.Progress(
        stage=image_pb2.Stage.ValueType(p.stage), layer_index=p.layer_index, layer_count=p.layer_count,
        bytes_done=p.bytes_done, bytes_total=p.bytes_total, message=p.message,
    )


def progress_from_proto(msg: image_pb2.Progress) -> Progress:
    return Progress(
        stage=Stage(msg.stage), layer_index=msg.layer_index, layer_count=msg.layer_count,
        bytes_done=msg.bytes_done, bytes_total=msg.bytes_total, message=msg.message,
    )


def failure_to_proto(f: Failure) -> image_pb2.Failure:
    return image_pb2.Failure(code=status_for_kind(f.kind).value[0], message=f.message, kind=f.kind)


def failure_from_proto(msg: image_pb2.Failure) -> Failure:
    kind = msg.kind or kind_for_status(_STATUS_BY_NUMBER.get(msg.code, grpc.StatusCode.UNKNOWN))
    return Failure(kind=kind, message=msg.message)


_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def job_to_proto(job: BuildJob) -> worker_service_pb2.BuildImageRequest:
    request = worker_service_pb2.BuildImageRequest(
        job_id=job.job_id, system=job.system, reference=job.reference, format=job.format,
        user_acl=list(job.user_acl), group_acl=list(job.group_acl),
        known_manifest_digest=job.known_manifest_digest, policy_digest=job.policy_digest,
    )
    if job.credentials is not None:
        request.credentials.username = job.credentials.username
        request.credentials.password = job.credentials.password
    return request


def job_from_proto(msg: worker_service_pb2.BuildImageRequest) -> BuildJob:
    credentials = None
    if msg.HasField("credentials") and msg.credentials.username:
        credentials = RegistryCredentials(msg.credentials.username, msg.credentials.password)
    return BuildJob(
        job_id=msg.job_id, system=msg.system, reference=msg.reference, format=msg.format,
        user_acl=tuple(msg.user_acl), group_acl=tuple(msg.group_acl), credentials=credentials,
        known_manifest_digest=msg.known_manifest_digest, policy_digest=msg.policy_digest,
    )


def trust_to_proto(trust: ImageTrust) -> image_pb2.ImageTrust:
    return image_pb2.ImageTrust(
        policy_digest=trust.policy_digest, scope=trust.scope,
        signers=[image_pb2.ImageSigner(kind=s.kind, fingerprint=s.fingerprint,
                                       identity=s.identity) for s in trust.signers],
    )


def trust_from_proto(msg: image_pb2.ImageTrust) -> ImageTrust:
    return ImageTrust(policy_digest=msg.policy_digest, scope=msg.scope, signers=tuple(
        ImageSigner(s.kind, s.fingerprint, s.identity) for s in msg.signers))


def result_to_proto(r: BuildResult) -> worker_service_pb2.BuildResult:
    msg = worker_service_pb2.BuildResult(
        image_id=r.image_id, manifest_digest=r.manifest_digest, format=r.format,
        metadata=metadata_to_proto(r.metadata), image_file=r.image_file, meta_file=r.meta_file,
        size_bytes=r.size_bytes, reused=r.reused, unchanged=r.unchanged, reference=r.reference,
    )
    if r.trust is not None:
        msg.trust.CopyFrom(trust_to_proto(r.trust))
    return msg


def result_from_proto(msg: worker_service_pb2.BuildResult) -> BuildResult:
    return BuildResult(
        image_id=msg.image_id, manifest_digest=msg.manifest_digest, format=msg.format,
        metadata=metadata_from_proto(msg.metadata), image_file=msg.image_file,
        meta_file=msg.meta_file, size_bytes=msg.size_bytes, reference=msg.reference,
        reused=msg.reused, unchanged=msg.unchanged,
        trust=trust_from_proto(msg.trust) if msg.HasField("trust") else None,
    )
