"""The streaming protocol on core NATS: how a streamed call is opened, paced and stopped.

::

    caller                                              module instance
      │ subscribe <inbox>                               │
      │ request mcp.call.<tenant>.<capability> ────────▶│  NATS headers Dai-Stream: <inbox>,
      │   (nobody subscribed: no responders, at once)   │               Dai-Window: <n>
      │◀─ ACCEPTED, headers["control"] = mcp.ctl.<m>.<i>│
      │◀─ <inbox>: STREAM_CHUNK 0, 1, 2 ...             │  each also recorded on mcp.res.<t>.<c>
      │ STREAM_ACK sequence=k ── mcp.ctl.<m>.<i> ──────▶│  may send chunks up to k + n - 1
      │◀─ <inbox>: the end: final STREAM_CHUNK,         │
      │       RESPONSE or ERROR, with compute_ms        │
      │ CANCEL ──────────────── mcp.ctl.<m>.<i> ───────▶│  cancels the handler's task, records
      │                                                 │  ERROR CANCELLED with compute_ms

The call itself is a NATS request so that a capability nobody serves is refused at once; the
module answers it as soon as it has the call (before it runs), so the caller learns where to send
CANCEL even for a call still waiting for a free slot. Chunks then travel to a private inbox, not
to a subject under ``mcp.res`` — a subject per stream would grow JetStream's per-subject state
without bound — and each is recorded with a second publish, like every other answer.

Flow control is by credit: the module may have at most ``window`` chunks that the caller has not
yet taken; the caller grants more with STREAM_ACK as it consumes. A slow reader thus pauses the
handler's generator instead of filling anyone's memory. The terminal message needs no credit.
"""

from __future__ import annotations

import time
import uuid

from .headers import MCP_CONTROL
from .mcp_v2_pb2 import MCPMessage, Progress
from .messages import ACCEPTED, CANCEL, STREAM_ACK, STREAM_CHUNK, answering

__all__ = [
    "DEFAULT_WINDOW",
    "MAX_WINDOW",
    "accepted",
    "cancel",
    "chunk",
    "stream_ack",
]

DEFAULT_WINDOW = 8
MAX_WINDOW = 256


def accepted(request: MCPMessage, control: str, *, source_module_id: str) -> MCPMessage:
    """The module's answer to a streamed call it has taken: chunks follow on the inbox."""
    message = answering(request, ACCEPTED, source_module_id)
    message.headers[MCP_CONTROL] = control
    return message


def chunk(
    request: MCPMessage,
    sequence: int,
    payload: bytes,
    *,
    source_module_id: str,
    fraction: float | None = None,
    status: str = "",
    final: bool = False,
) -> MCPMessage:
    """One STREAM_CHUNK of the answer to ``request``; ``payload`` is JSON, or empty for progress only."""
    message = answering(request, STREAM_CHUNK, source_module_id)
    message.sequence = sequence
    message.final = final
    if payload:
        message.payload = payload
        message.content_type = "application/json"
    if fraction is not None or status:
        message.progress.CopyFrom(Progress(fraction=fraction, message=status))
    return message


def cancel(request: MCPMessage, *, source_module_id: str) -> MCPMessage:
    """The caller's CANCEL of ``request``: sent to the module's control subject and recorded."""
    message = MCPMessage(
        id=str(uuid.uuid4()),
        type=CANCEL,
        source_module_id=source_module_id,
        action=request.action,
        context=request.context,
        correlation_id=request.correlation_id,
    )
    message.timestamp.FromNanoseconds(time.time_ns())
    return message


def stream_ack(request: MCPMessage, consumed: int) -> MCPMessage:
    """Credit for the module: the caller has taken every chunk before sequence ``consumed``."""
    return MCPMessage(
        type=STREAM_ACK,
        correlation_id=request.correlation_id,
        sequence=consumed,
        context=request.context,
    )
