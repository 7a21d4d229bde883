"""Building and reading MCP v2 messages.

The gateway, the router and the SDK all go through these helpers, so a request, its response
and its error always agree on ids, context and content type.

They run two or three times per call, so they avoid what is slow in protobuf's Python API:
enum values are read once into module constants (``MessageType.REQUEST`` is a ~1 µs lookup
each time), fields are assigned one by one on an empty message and empty strings are left
unset (about half the cost of the keyword constructor, and the same bytes on the wire: proto3
does not serialise an empty string), the timestamp is set field by field, and ids come from
:func:`.ids.new_id`.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from .errors import ErrorCode
from .ids import new_id
from .mcp_v2_pb2 import MCPMessage, MessageType

__all__ = [
    "ACCEPTED",
    "CANCEL",
    "DEFAULT_TTL_SECONDS",
    "ERROR",
    "JSON",
    "REQUEST",
    "RESPONSE",
    "STREAM_ACK",
    "STREAM_CHUNK",
    "answering",
    "decode",
    "error_details",
    "error_reply",
    "new_event",
    "new_request",
    "reply",
]

JSON = "application/json"
DEFAULT_TTL_SECONDS = 30

# The message types the call path builds and tests, read once.
REQUEST: MessageType = MessageType.REQUEST
RESPONSE: MessageType = MessageType.RESPONSE
ERROR: MessageType = MessageType.ERROR
STREAM_CHUNK: MessageType = MessageType.STREAM_CHUNK
ACCEPTED: MessageType = MessageType.ACCEPTED
CANCEL: MessageType = MessageType.CANCEL
STREAM_ACK: MessageType = MessageType.STREAM_ACK

_NANOS = 1_000_000_000

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


def _stamp(message: MCPMessage) -> MCPMessage:
    """Set ``message.timestamp`` to now (UTC) and return the message."""
    stamp = message.timestamp
    stamp.seconds, stamp.nanos = divmod(time.time_ns(), _NANOS)
    return message


def new_request(
    action: str,
    payload: bytes,
    *,
    tenant_id: str,
    source_module_id: str,
    target_module_id: str = "",
    user_id: str = "",
    api_key_id: str = "",
    priority: int = 5,
    ttl: int = DEFAULT_TTL_SECONDS,
    content_type: str = JSON,
) -> MCPMessage:
    """A REQUEST whose id is also the call's correlation id."""
    call_id = new_id()
    message = MCPMessage()
    message.id = call_id
    message.type = REQUEST
    message.source_module_id = source_module_id
    if target_module_id:
        message.target_module_id = target_module_id
    message.action = action
    context = message.context
    context.SetInParent()  # present even when empty, as a Context(...) given to the constructor would be
    context.tenant_id = tenant_id
    if user_id:
        context.user_id = user_id
    if api_key_id:
        context.api_key_id = api_key_id
    message.payload = payload
    message.correlation_id = call_id
    message.priority = priority
    message.ttl = ttl
    message.content_type = content_type
    return _stamp(message)


def new_event(topic: str, payload: bytes, *, tenant_id: str, source_module_id: str) -> MCPMessage:
    """An EVENT: a fact about ``topic`` for whoever subscribes; nobody answers it."""
    event_id = new_id()
    return _stamp(
        MCPMessage(
            id=event_id,
            type=MessageType.EVENT,
            source_module_id=source_module_id,
            action=topic,
            context={"tenant_id": tenant_id},
            payload=payload,
            correlation_id=event_id,
            content_type=JSON,
        )
    )


def reply(request: MCPMessage, payload: bytes, *, source_module_id: str) -> MCPMessage:
    """The RESPONSE to ``request``."""
    message = answering(request, RESPONSE, source_module_id)
    message.payload = payload
    message.content_type = JSON
    return message


def answering(request: MCPMessage, kind: MessageType, source_module_id: str) -> MCPMessage:
    """A message of type ``kind`` answering ``request``: a new id, the request's action, context and
    correlation id, addressed to its source, stamped now. The answers of every kind start here."""
    message = MCPMessage()
    message.id = new_id()
    message.type = kind
    message.source_module_id = source_module_id
    if request.source_module_id:
        message.target_module_id = request.source_module_id
    message.action = request.action
    context = message.context
    context.CopyFrom(request.context)
    context.SetInParent()  # present even when the request's is empty, as the constructor would make it
    message.correlation_id = request.correlation_id
    return _stamp(message)


def error_reply(
    request: MCPMessage,
    code: ErrorCode,
    text: str,
    *,
    source_module_id: str,
    details: dict[str, Any] | None = None,
) -> MCPMessage:
    """The ERROR answering ``request``: a stable code, a sentence, and JSON details."""
    message = answering(request, ERROR, source_module_id)
    error = message.error
    error.code = code.value
    error.message = text
    error.details = _json_encode(details or {})
    return message


def error_details(message: MCPMessage) -> dict[str, Any]:
    """The JSON details of an ERROR message (``{}`` when absent or unreadable)."""
    if not message.error.details:
        return {}
    try:
        details = _json_decode(message.error.details)
    except msgspec.DecodeError:
        return {}
    return details if isinstance(details, dict) else {"value": details}


def decode(data: bytes) -> MCPMessage:
    """Parse an MCP message; raises ``google.protobuf.message.DecodeError`` when it is not one."""
    message = MCPMessage()
    message.ParseFromString(data)
    return message
