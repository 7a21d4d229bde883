"""The contracts every part of Democratic_AI shares: the MCP v2 message, subjects, streams,
error codes, the streaming protocol and the events of the REGISTRY stream."""

from __future__ import annotations

from .errors import ErrorCode, PlatformError
from .mcp_v2_pb2 import Context, Error, MCPMessage, MessageType
from .messages import (
    DEFAULT_TTL_SECONDS,
    JSON,
    decode,
    error_details,
    error_reply,
    new_event,
    new_request,
    reply,
)
from .streams import STREAMS, ensure_streams

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "JSON",
    "STREAMS",
    "Context",
    "Error",
    "ErrorCode",
    "MCPMessage",
    "MessageType",
    "PlatformError",
    "decode",
    "ensure_streams",
    "error_details",
    "error_reply",
    "new_event",
    "new_request",
    "reply",
]
