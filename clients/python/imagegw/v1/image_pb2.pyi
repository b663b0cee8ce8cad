import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_STATE_UNSPECIFIED: _ClassVar[ImageState]
    IMAGE_STATE_QUEUED: _ClassVar[ImageState]
    IMAGE_STATE_PULLING: _ClassVar[ImageState]
    IMAGE_STATE_CONVERTING: _ClassVar[ImageState]
    IMAGE_STATE_TRANSFERRING: _ClassVar[ImageState]
    IMAGE_STATE_READY: _ClassVar[ImageState]
    IMAGE_STATE_FAILED: _ClassVar[ImageState]
    IMAGE_STATE_EXPIRED: _ClassVar[ImageState]

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_QUEUED: _ClassVar[Stage]
    STAGE_RESOLVING: _ClassVar[Stage]
    STAGE_DOWNLOADING: _ClassVar[Stage]
    STAGE_CONVERTING: _ClassVar[Stage]
    STAGE_PUBLISHING: _ClassVar[Stage]
    STAGE_DONE: _ClassVar[Stage]
IMAGE_STATE_UNSPECIFIED: ImageState
IMAGE_STATE_QUEUED: ImageState
IMAGE_STATE_PULLING: ImageState
IMAGE_STATE_CONVERTING: ImageState
IMAGE_STATE_TRANSFERRING: ImageState
IMAGE_STATE_READY: ImageState
IMAGE_STATE_FAILED: ImageState
IMAGE_STATE_EXPIRED: ImageState
STAGE_UNSPECIFIED: Stage
STAGE_QUEUED: Stage
STAGE_RESOLVING: Stage
STAGE_DOWNLOADING: Stage
STAGE_CONVERTING: Stage
STAGE_PUBLISHING: Stage
STAGE_DONE: Stage

class ImageMetadata(_message.Message):
    __slots__ = ("env", "entrypoint", "cmd", "workdir", "user", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENV_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    CMD_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    env: _containers.RepeatedScalarFieldContainer[str]
    entrypoint: _containers.RepeatedScalarFieldContainer[str]
    cmd: _containers.RepeatedScalarFieldContainer[str]
    workdir: str
    user: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, env: _Optional[_Iterable[str]] = ..., entrypoint: _Optional[_Iterable[str]] = ..., cmd: _Optional[_Iterable[str]] = ..., workdir: _Optional[str] = ..., user: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stage", "layer_index", "layer_count", "bytes_done", "bytes_total", "message")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    LAYER_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAYER_COUNT_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stage: Stage
    layer_index: int
    layer_count: int
    bytes_done: int
    bytes_total: int
    message: str
    def __init__(self, stage: _Optional[_Union[Stage, str]] = ..., layer_index: _Optional[int] = ..., layer_count: _Optional[int] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("id", "system", "type", "reference", "tags", "manifest_digest", "state", "metadata", "user_acl", "group_acl", "format", "size_bytes", "last_pull_time", "expire_time", "failure", "image_file", "progress", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    USER_ACL_FIELD_NUMBER: _ClassVar[int]
    GROUP_ACL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_PULL_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FILE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    system: str
    type: str
    reference: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    manifest_digest: str
    state: ImageState
    metadata: ImageMetadata
    user_acl: _containers.RepeatedScalarFieldContainer[int]
    group_acl: _containers.RepeatedScalarFieldContainer[int]
    format: str
    size_bytes: int
    last_pull_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    failure: Failure
    image_file: str
    progress: Progress
    name: str
    def __init__(self, id: _Optional[str] = ..., system: _Optional[str] = ..., type: _Optional[str] = ..., reference: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., manifest_digest: _Optional[str] = ..., state: _Optional[_Union[ImageState, str]] = ..., metadata: _Optional[_Union[ImageMetadata, _Mapping]] = ..., user_acl: _Optional[_Iterable[int]] = ..., group_acl: _Optional[_Iterable[int]] = ..., format: _Optional[str] = ..., size_bytes: _Optional[int] = ..., last_pull_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., image_file: _Optional[str] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...
