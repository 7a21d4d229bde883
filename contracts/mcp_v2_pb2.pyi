import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MessageType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_TYPE_UNSPECIFIED: _ClassVar[MessageType]
    REQUEST: _ClassVar[MessageType]
    RESPONSE: _ClassVar[MessageType]
    EVENT: _ClassVar[MessageType]
    ERROR: _ClassVar[MessageType]
    STREAM_CHUNK: _ClassVar[MessageType]
    CANCEL: _ClassVar[MessageType]
    HEARTBEAT: _ClassVar[MessageType]
    ACCEPTED: _ClassVar[MessageType]
    STREAM_ACK: _ClassVar[MessageType]
MESSAGE_TYPE_UNSPECIFIED: MessageType
REQUEST: MessageType
RESPONSE: MessageType
EVENT: MessageType
ERROR: MessageType
STREAM_CHUNK: MessageType
CANCEL: MessageType
HEARTBEAT: MessageType
ACCEPTED: MessageType
STREAM_ACK: MessageType

class Context(_message.Message):
    __slots__ = ("tenant_id", "user_id", "session_id", "api_key_id", "trace_id", "auth")
    class AuthEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    user_id: str
    session_id: str
    api_key_id: str
    trace_id: str
    auth: _containers.ScalarMap[str, str]
    def __init__(self, tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., api_key_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., auth: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "details")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    details: bytes
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., details: _Optional[bytes] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("fraction", "message")
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    fraction: float
    message: str
    def __init__(self, fraction: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class MCPMessage(_message.Message):
    __slots__ = ("id", "type", "source_module_id", "target_module_id", "action", "context", "payload", "timestamp", "correlation_id", "headers", "priority", "ttl", "content_type", "error", "sequence", "final", "progress")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_MODULE_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: MessageType
    source_module_id: str
    target_module_id: str
    action: str
    context: Context
    payload: bytes
    timestamp: _timestamp_pb2.Timestamp
    correlation_id: str
    headers: _containers.ScalarMap[str, str]
    priority: int
    ttl: int
    content_type: str
    error: Error
    sequence: int
    final: bool
    progress: Progress
    def __init__(self, id: _Optional[str] = ..., type: _Optional[_Union[MessageType, str]] = ..., source_module_id: _Optional[str] = ..., target_module_id: _Optional[str] = ..., action: _Optional[str] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., payload: _Optional[bytes] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., correlation_id: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ..., priority: _Optional[int] = ..., ttl: _Optional[int] = ..., content_type: _Optional[str] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., sequence: _Optional[int] = ..., final: _Optional[bool] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ...) -> None: ...
