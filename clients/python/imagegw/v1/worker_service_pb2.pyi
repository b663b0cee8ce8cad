from imagegw.v1 import image_pb2 as _image_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegistryCredentials(_message.Message):
    __slots__ = ("username", "password")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class BuildImageRequest(_message.Message):
    __slots__ = ("job_id", "system", "reference", "format", "user_acl", "group_acl", "credentials", "known_manifest_digest", "policy_digest")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    USER_ACL_FIELD_NUMBER: _ClassVar[int]
    GROUP_ACL_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    POLICY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    system: str
    reference: str
    format: str
    user_acl: _containers.RepeatedScalarFieldContainer[int]
    group_acl: _containers.RepeatedScalarFieldContainer[int]
    credentials: RegistryCredentials
    known_manifest_digest: str
    policy_digest: str
    def __init__(self, job_id: _Optional[str] = ..., system: _Optional[str] = ..., reference: _Optional[str] = ..., format: _Optional[str] = ..., user_acl: _Optional[_Iterable[int]] = ..., group_acl: _Optional[_Iterable[int]] = ..., credentials: _Optional[_Union[RegistryCredentials, _Mapping]] = ..., known_manifest_digest: _Optional[str] = ..., policy_digest: _Optional[str] = ...) -> None: ...

class BuildResult(_message.Message):
    __slots__ = ("image_id", "manifest_digest", "format", "metadata", "image_file", "meta_file", "size_bytes", "reused", "unchanged", "reference", "trust")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FILE_FIELD_NUMBER: _ClassVar[int]
    META_FILE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    TRUST_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    manifest_digest: str
    format: str
    metadata: _image_pb2.ImageMetadata
    image_file: str
    meta_file: str
    size_bytes: int
    reused: bool
    unchanged: bool
    reference: str
    trust: _image_pb2.ImageTrust
    def __init__(self, image_id: _Optional[str] = ..., manifest_digest: _Optional[str] = ..., format: _Optional[str] = ..., metadata: _Optional[_Union[_image_pb2.ImageMetadata, _Mapping]] = ..., image_file: _Optional[str] = ..., meta_file: _Optional[str] = ..., size_bytes: _Optional[int] = ..., reused: _Optional[bool] = ..., unchanged: _Optional[bool] = ..., reference: _Optional[str] = ..., trust: _Optional[_Union[_image_pb2.ImageTrust, _Mapping]] = ...) -> None: ...

class BuildImageResponse(_message.Message):
    __slots__ = ("progress", "result", "failure")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    progress: _image_pb2.Progress
    result: BuildResult
    failure: _image_pb2.Failure
    def __init__(self, progress: _Optional[_Union[_image_pb2.Progress, _Mapping]] = ..., result: _Optional[_Union[BuildResult, _Mapping]] = ..., failure: _Optional[_Union[_image_pb2.Failure, _Mapping]] = ...) -> None: ...
