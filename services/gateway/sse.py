"""``Accept: text/event-stream`` on the invoke endpoint: a call's answers as Server-Sent Events.

::

    event: chunk
    data: {"sequence": 0, "data": {...}, "progress": {"fraction": 0.25, "message": "..."}}

    event: done
    data: {"call_id": "...", "module_id": "...", "chunks": 4, "compute_ms": 812.5}

    event: error
    data: {"call_id": "...", "error": {"code": "...", "message": "...", "details": {}}}

The response starts only once the module's first message is in, so a call refused outright — no
module, input that breaks the schema, ttl passed while queued — is the usual JSON error with its
status, exactly as without streaming; only failures after the first chunk are ``error`` events.
A capability that does not stream gives one ``chunk`` and ``done``.

Backpressure: the next message is taken from the call's stream only after the previous event is
written, ``write`` waits while the client's socket is full, and taking a message is what grants
the module credit. A slow reader therefore holds the module at most ``window`` chunks ahead, and
the gateway holds at most that many chunks of the stream in memory.

Hanging up cancels the call: the gateway's runner cancels this handler when the connection
drops (``handler_cancellation``), and closing the stream sends CANCEL to the module.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from democratic_ai.contracts import MCPMessage, MessageType
from democratic_ai.hub import CallStream

from .wire import compute_ms, error_document, http_error, payload_of, progress_of, sse_event

__all__ = ["stream_call"]

_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tell nginx-like proxies not to hold events back
}


async def stream_call(request: web.Request, stream: CallStream, headers: dict[str, str]) -> web.StreamResponse:
    """Relay the answers of ``stream``, a call the gate opened, to the client as events, and
    close it: before its end, that cancels the call at the module."""
    call_id = stream.call_id
    try:
        first = await anext(stream)  # a stream always has one message at least: its answer or refusal
        if first.type == MessageType.ERROR:
            response = http_error(first, call_id)
            response.headers.update(headers)
            return response
        response = web.StreamResponse(headers={**_HEADERS, **headers})
        await response.prepare(request)
        try:
            await _relay(response, first, stream, call_id)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client left mid-stream; closing the stream below cancels the call
        return response
    finally:
        await stream.close()


async def _relay(response: web.StreamResponse, message: MCPMessage | None, stream: CallStream, call_id: str) -> None:
    chunks = 0
    while message is not None:
        if message.type == MessageType.ERROR:
            await response.write(sse_event("error", {"call_id": call_id, "error": error_document(message)}))
            return
        if message.payload or message.HasField("progress"):
            document: dict[str, Any] = {"sequence": chunks}
            if message.payload:
                document["data"] = payload_of(message)
            if message.HasField("progress"):
                document["progress"] = progress_of(message)
            await response.write(sse_event("chunk", document))
            chunks += 1
        if message.type == MessageType.RESPONSE or message.final:
            done = {
                "call_id": call_id,
                "module_id": message.source_module_id,
                "chunks": chunks,
                "compute_ms": compute_ms(message),
            }
            await response.write(sse_event("done", done))
            return
        message = await anext(stream, None)
