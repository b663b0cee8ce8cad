"""Gateway protobuf conversions (edge code): statuses and records to messages."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from imagegw.domain.model import ImageState
from imagegw.gateway.core.signed_images import trust_of
from imagegw.gateway.core.views import ImageStatus
from imagegw.gateway.records import PullRecord
from imagegw.rpc import convert
from imagegw.v1 import gateway_service_pb2, image_pb2

_JOB_STATE = {
    ImageState.QUEUED: gateway_service_pb2.JOB_STATE_WAITING,
    ImageState.PULLING: gateway_service_pb2.JOB_STATE_RUNNING,
    ImageState.CONVERTING: gateway_service_pb2.JOB_STATE_RUNNING,
    ImageState.TRANSFERRING: gateway_service_pb2.JOB_STATE_RUNNING,
    ImageState.READY: gateway_service_pb2.JOB_STATE_SUCCEEDED,
    ImageState.FAILED: gateway_service_pb2.JOB_STATE_FAILED,
}


def timestamp(seconds: float) -> Timestamp | None:
    if not seconds:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def status_to_image(status: ImageStatus) -> image_pb2.Image:
    message = image_pb2.Image(system=status.system, type="docker", reference=status.reference,
                              state=image_pb2.ImageState.ValueType(status.state))
    image = status.image
    if image is not None:
        message.id = image.image_id
        message.tags.extend(image.tags)
        message.manifest_digest = image.manifest_digest
        message.metadata.CopyFrom(convert.metadata_to_proto(image.metadata))
        message.user_acl.extend(image.user_acl)
        message.group_acl.extend(image.group_acl)
        message.format = image.format
        message.size_bytes = image.size_bytes
        message.image_file = image.image_file
        if (trust := trust_of(image)) is not None:
            message.trust.CopyFrom(convert.trust_to_proto(trust))
        message.name = image.name
        if stamp := timestamp(image.last_pull):
            message.last_pull_time.CopyFrom(stamp)
        if stamp := timestamp(status.expire_time):
            message.expire_time.CopyFrom(stamp)
    elif status.pull is not None:
        message.user_acl.extend(status.pull.user_acl)
        message.group_acl.extend(status.pull.group_acl)
    if status.failure is not None:
        message.failure.CopyFrom(convert.failure_to_proto(status.failure))
    if status.progress is not None and status.state.in_flight:
        message.progress.CopyFrom(convert.progress_to_proto(status.progress))
    return message


def pull_to_job(pull: PullRecord) -> gateway_service_pb2.Job:
    job = gateway_service_pb2.Job(
        id=pull.job_id, system=pull.key.system, reference=pull.key.reference,
        state=_JOB_STATE.get(pull.state, gateway_service_pb2.JOB_STATE_UNSPECIFIED),
        attempts=pull.attempts,
    )
    if pull.progress is not None and pull.state.in_flight:
        job.progress.CopyFrom(convert.progress_to_proto(pull.progress))
    if stamp := timestamp(pull.created):
        job.create_time.CopyFrom(stamp)
    if stamp := timestamp(pull.started):
        job.start_time.CopyFrom(stamp)
    if not pull.state.in_flight and (stamp := timestamp(pull.updated)):
        job.end_time.CopyFrom(stamp)
    if pull.failure is not None and pull.state == ImageState.FAILED:
        job.failure.CopyFrom(convert.failure_to_proto(pull.failure))
    return job
