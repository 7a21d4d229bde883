"""Header names: the one place that spells every header the platform reads or writes.

Three kinds of header travel, each in its own place:

- **NATS headers** of a bus message (``msg.headers``): the platform's own ``Dai-*`` headers, and
  the ones NATS and JetStream define (``Nats-*``, ``Status``).
- **MCP headers** of an :class:`MCPMessage` (``message.headers``), which travel inside the
  message and are recorded with it in the MCP stream.
- **HTTP headers** of the gateway's API that the platform defines (``X-*``). Standard HTTP
  headers (``Accept``, ``Authorization``, ``Content-Encoding``…) keep their usual spelling.

The W3C trace context (``traceparent``, ``tracestate``) is written and read by OpenTelemetry's
propagator (:mod:`.tracing`); :data:`TRACEPARENT` names it for whoever looks at a message. It is
a NATS header of a call and of a usage event, and — when the module traces — an MCP header of a
call's last answer, naming the module's span (the call's usage events continue from it).
"""

from __future__ import annotations

__all__ = [
    "DAI_REMAINING_MS",
    "DAI_STREAM",
    "DAI_WINDOW",
    "HTTP_API_KEY",
    "HTTP_CALL_ID",
    "MCP_ACCEPT_HELD",
    "MCP_BYTES_IN",
    "MCP_BYTES_OUT",
    "MCP_COMPUTE_MS",
    "MCP_CONTROL",
    "MCP_TRANSPORT",
    "NATS_CONSUMER_STALLED",
    "NATS_EXPECTED_LAST_SUBJECT_SEQUENCE",
    "NATS_LAST_CONSUMER",
    "NATS_MSG_ID",
    "NATS_STATUS",
    "TRACEPARENT",
]

# NATS headers the platform defines.
DAI_STREAM = "Dai-Stream"  # a streamed call: the caller's inbox for its chunks (:mod:`.streaming`)
DAI_WINDOW = "Dai-Window"  # a streamed call: chunks the module may send ahead of the caller
DAI_REMAINING_MS = "Dai-Remaining-Ms"  # a call: whole milliseconds its deadline has left (:mod:`.deadlines`)

# NATS headers NATS and JetStream define.
NATS_MSG_ID = "Nats-Msg-Id"  # JetStream drops a second message with the same id in the stream's duplicate window
NATS_EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"  # append only if the subject is here
NATS_CONSUMER_STALLED = "Nats-Consumer-Stalled"  # a flow-control heartbeat: where to answer a stalled consumer
NATS_LAST_CONSUMER = "Nats-Last-Consumer"  # an idle heartbeat: the last consumer sequence the server sent
NATS_STATUS = "Status"  # a status message without payload, e.g. "503": no responders
TRACEPARENT = "traceparent"  # W3C trace context, written by the OpenTelemetry propagator

# MCP headers (``MCPMessage.headers``).
MCP_CONTROL = "control"  # ACCEPTED: the subject for CANCEL and STREAM_ACK of the call
MCP_ACCEPT_HELD = "accept_held"  # a plain call whose caller reads an ACCEPTED for a held call (:mod:`.presence`)
MCP_COMPUTE_MS = "compute_ms"  # a call's last answer: milliseconds the handler ran
MCP_BYTES_IN = "bytes_in"  # a call's last answer: size of the request payload it answers
# The last message of a streamed call: the payload bytes of every message of its answer. An
# answer without it sent its own payload and nothing else.
MCP_BYTES_OUT = "bytes_out"
# A gateway call's request (and the gateway's refusal of it): the way it came in — http, sse,
# websocket, mcp — as the calls read model shows it (projections/calls.py).
MCP_TRANSPORT = "transport"

# HTTP headers of the gateway's API.
HTTP_API_KEY = "X-API-Key"  # the caller's API key
HTTP_CALL_ID = "X-Call-Id"  # the id of the call an answer is for
