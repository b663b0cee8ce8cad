import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from imagegw.v1 import image_pb2 as _image_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_WAITING: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_WAITING: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState

class PullImageRequest(_message.Message):
    __slots__ = ("system", "type", "reference", "no_wait", "force", "user_acl", "group_acl")
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    NO_WAIT_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    USER_ACL_FIELD_NUMBER: _ClassVar[int]
    GROUP_ACL_FIELD_NUMBER: _ClassVar[int]
    system: str
    type: str
    reference: str
    no_wait: bool
    force: bool
    user_acl: _containers.RepeatedScalarFieldContainer[int]
    group_acl: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, system: _Optional[str] = ..., type: _Optional[str] = ..., reference: _Optional[str] = ..., no_wait: _Optional[bool] = ..., force: _Optional[bool] = ..., user_acl: _Optional[_Iterable[int]] = ..., group_acl: _Optional[_Iterable[int]] = ...) -> None: ...

class PullImageResponse(_message.Message):
    __slots__ = ("image", "progress")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    image: _image_pb2.Image
    progress: _image_pb2.Progress
    def __init__(self, image: _Optional[_Union[_image_pb2.Image, _Mapping]] = ..., progress: _Optional[_Union[_image_pb2.Progress, _Mapping]] = ...) -> None: ...

class LookupImageRequest(_message.Message):
    __slots__ = ("system", "type", "reference")
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    system: str
    type: str
    reference: str
    def __init__(self, system: _Optional[str] = ..., type: _Optional[str] = ..., reference: _Optional[str] = ...) -> None: ...

class LookupImageResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: _image_pb2.Image
    def __init__(self, image: _Optional[_Union[_image_pb2.Image, _Mapping]] = ...) -> None: ...

class ListImagesRequest(_message.Message):
    __slots__ = ("system", "state", "page_size", "page_token")
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    system: str
    state: _image_pb2.ImageState
    page_size: int
    page_token: str
    def __init__(self, system: _Optional[str] = ..., state: _Optional[_Union[_image_pb2.ImageState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListImagesResponse(_message.Message):
    __slots__ = ("images", "next_page_token")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_image_pb2.Image]
    next_page_token: str
    def __init__(self, images: _Optional[_Iterable[_Union[_image_pb2.Image, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "system", "reference", "state", "progress", "create_time", "start_time", "end_time", "failure", "attempts")
    ID_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    system: str
    reference: str
    state: JobState
    progress: _image_pb2.Progress
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    failure: _image_pb2.Failure
    attempts: int
    def __init__(self, id: _Optional[str] = ..., system: _Optional[str] = ..., reference: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[_Union[_image_pb2.Progress, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., failure: _Optional[_Union[_image_pb2.Failure, _Mapping]] = ..., attempts: _Optional[int] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("system",)
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    system: str
    def __init__(self, system: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class ExpireImageRequest(_message.Message):
    __slots__ = ("system", "type", "reference")
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    system: str
    type: str
    reference: str
    def __init__(self, system: _Optional[str] = ..., type: _Optional[str] = ..., reference: _Optional[str] = ...) -> None: ...

class ExpireImageResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: _image_pb2.Image
    def __init__(self, image: _Optional[_Union[_image_pb2.Image, _Mapping]] = ...) -> None: ...

class ExpireUnusedImagesRequest(_message.Message):
    __slots__ = ("system",)
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    system: str
    def __init__(self, system: _Optional[str] = ...) -> None: ...

class ExpireUnusedImagesResponse(_message.Message):
    __slots__ = ("image_ids",)
    IMAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    image_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, image_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ImportHeader(_message.Message):
    __slots__ = ("system", "tag", "format", "size_bytes", "sha256", "metadata", "user_acl", "group_acl")
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    USER_ACL_FIELD_NUMBER: _ClassVar[int]
    GROUP_ACL_FIELD_NUMBER: _ClassVar[int]
    system: str
    tag: str
    format: str
    size_bytes: int
    sha256: str
    metadata: _image_pb2.ImageMetadata
    user_acl: _containers.RepeatedScalarFieldContainer[int]
    group_acl: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, system: _Optional[str] = ..., tag: _Optional[str] = ..., format: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., metadata: _Optional[_Union[_image_pb2.ImageMetadata, _Mapping]] = ..., user_acl: _Optional[_Iterable[int]] = ..., group_acl: _Optional[_Iterable[int]] = ...) -> None: ...

class ImportImageRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ImportHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[ImportHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class ImportImageResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: _image_pb2.Image
    def __init__(self, image: _Optional[_Union[_image_pb2.Image, _Mapping]] = ...) -> None: ...

class LoginRequest(_message.Message):
    __slots__ = ("system", "registry", "username", "password")
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    system: str
    registry: str
    username: str
    password: str
    def __init__(self, system: _Optional[str] = ..., registry: _Optional[str] = ..., username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class LoginResponse(_message.Message):
    __slots__ = ("registry", "username", "message")
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    registry: str
    username: str
    message: str
    def __init__(self, registry: _Optional[str] = ..., username: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class LogoutRequest(_message.Message):
    __slots__ = ("system", "registry")
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    system: str
    registry: str
    def __init__(self, system: _Optional[str] = ..., registry: _Optional[str] = ...) -> None: ...

class LogoutResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...
