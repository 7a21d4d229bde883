"""How MCP answers look at the edge: HTTP error documents, SSE events and WebSocket JSON frames.

On the bus a message is protobuf with JSON bytes inside; at the edge it is one JSON document.
The payload bytes a module produced are spliced in unparsed (``msgspec.Raw``), so a large
chunk costs one copy, not a decode and an encode.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from aiohttp import web

from democratic_ai.contracts import ErrorCode, MCPMessage, MessageType, error_details
from democratic_ai.contracts.headers import HTTP_CALL_ID, MCP_COMPUTE_MS

from .errors import STATUS, error_response

__all__ = [
    "MAX_TTL_SECONDS",
    "Auth",
    "Cancel",
    "ClientMessage",
    "Request",
    "WireError",
    "WireMessage",
    "WireProgress",
    "compute_ms",
    "correlation_id_of",
    "decode_client_message",
    "encode",
    "error_document",
    "http_error",
    "payload_of",
    "progress_of",
    "sse_event",
    "to_wire",
]

MAX_TTL_SECONDS = 300

encode = msgspec.json.Encoder().encode
_decode_any = msgspec.json.Decoder().decode


def http_error(answer: MCPMessage, call_id: str) -> web.Response:
    """The HTTP response for an ERROR answer: the code's status, the one error shape."""
    code = answer.error.code
    details = error_details(answer)
    status = STATUS.get(ErrorCode(code), 500) if code in ErrorCode.__members__ else 500
    if code == ErrorCode.VALIDATION_FAILED and details.get("where") == "output":
        status = 502  # the module broke its own contract: not the caller's fault
    return error_response(code, answer.error.message, details, status=status, headers={HTTP_CALL_ID: call_id})


def error_document(answer: MCPMessage) -> dict[str, Any]:
    return {"code": answer.error.code, "message": answer.error.message, "details": error_details(answer)}


def payload_of(message: MCPMessage) -> msgspec.Raw | None:
    """The message's JSON payload, ready to splice into a document; None when it has none.

    A payload with a raw line break (legal JSON whitespace, but it would end an SSE ``data:``
    line) is re-encoded compactly; msgspec, which the SDK uses, never writes one.
    """
    if not message.payload:
        return None
    payload = message.payload
    if b"\n" in payload or b"\r" in payload:
        payload = encode(_decode_any(payload))
    return msgspec.Raw(payload)


class WireProgress(msgspec.Struct, omit_defaults=True):
    fraction: float | None = None
    message: str = ""


def progress_of(message: MCPMessage) -> WireProgress | None:
    if not message.HasField("progress"):
        return None
    progress = message.progress
    return WireProgress(progress.fraction if progress.HasField("fraction") else None, progress.message)


def compute_ms(message: MCPMessage) -> float | None:
    try:
        return float(message.headers[MCP_COMPUTE_MS])
    except (KeyError, ValueError):
        return None


def sse_event(name: str, document: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + encode(document) + b"\n\n"


# --- WebSocket frames ----------------------------------------------------------------------


class WireError(msgspec.Struct):
    code: str
    message: str
    details: dict[str, Any] = {}


class WireMessage(msgspec.Struct, omit_defaults=True):
    """An MCP message as a WebSocket client sees it: ``correlation_id`` is the client's own."""

    type: str
    correlation_id: str = ""
    call_id: str = ""  # the platform's id of the call, as in X-Call-Id and the MCP stream
    id: str = ""
    action: str = ""
    source_module_id: str = ""
    sequence: int | None = None
    final: bool = False
    payload: msgspec.Raw | None = None
    progress: WireProgress | None = None
    headers: dict[str, str] = {}
    error: WireError | None = None
    tenant_id: str = ""  # READY only


def to_wire(message: MCPMessage, correlation_id: str) -> WireMessage:
    """The WebSocket frame for an answer to the client's call ``correlation_id``."""
    error = None
    if message.type == MessageType.ERROR:
        error = WireError(message.error.code, message.error.message, error_details(message))
    return WireMessage(
        type=MessageType.Name(message.type),
        correlation_id=correlation_id,
        call_id=message.correlation_id,
        id=message.id,
        action=message.action,
        source_module_id=message.source_module_id,
        sequence=message.sequence if message.type == MessageType.STREAM_CHUNK else None,
        final=message.final,
        payload=payload_of(message),
        progress=progress_of(message),
        headers=dict(message.headers),
        error=error,
    )


CorrelationId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class Auth(msgspec.Struct, tag="AUTH", tag_field="type"):
    """First message of a connection that sent no key in its headers (browsers cannot)."""

    api_key: str


class Request(msgspec.Struct, tag="REQUEST", tag_field="type"):
    correlation_id: CorrelationId
    action: str
    payload: msgspec.Raw = msgspec.Raw(b"{}")
    target_module_id: str = ""
    priority: Annotated[int, msgspec.Meta(ge=0, le=9)] = 5
    ttl: Annotated[int, msgspec.Meta(ge=1, le=MAX_TTL_SECONDS)] = 30


class Cancel(msgspec.Struct, tag="CANCEL", tag_field="type"):
    correlation_id: CorrelationId


ClientMessage = Auth | Request | Cancel
_client_decoder = msgspec.json.Decoder(ClientMessage)


class _Envelope(msgspec.Struct):
    correlation_id: str = ""


_envelope_decoder = msgspec.json.Decoder(_Envelope)


def decode_client_message(data: str | bytes) -> ClientMessage:
    """Parse a client's frame; raises ``msgspec.ValidationError`` / ``DecodeError`` saying what is wrong
    (a ``DecodeError`` too for JSON nested deeper than the decoder recurses)."""
    try:
        return _client_decoder.decode(data)
    except RecursionError:
        raise msgspec.DecodeError("the message is nested too deeply") from None


def correlation_id_of(data: str | bytes) -> str:
    """The ``correlation_id`` a frame that cannot be read names, if any: so its ERROR can name it too."""
    try:
        found = _envelope_decoder.decode(data).correlation_id
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return ""
    return found if 0 < len(found) <= 128 else ""
