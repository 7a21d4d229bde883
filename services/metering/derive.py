"""What a call used, derived from its answer alone.

The gateway meters a call from the answer it returns; the recovery sweeper re-derives the
same usage from the answer's record in the MCP stream. Both call :func:`usage_of` on the same
message, so both produce the same events — same values, same time, same ``Nats-Msg-Id`` — and
a re-derived event that was already published is a harmless duplicate.

An answer carries everything needed: its context (tenant, user, API key), the capability
(``action``), the module that answered, the call id (``correlation_id``), its own timestamp,
and the headers the module measured (``compute_ms``, ``bytes_in``). ``bytes_out`` is the size
of the result payload — or, for a streamed call, the ``bytes_out`` header of its last message,
the sum of the payloads of all its chunks.

A call ends with a RESPONSE, an ERROR, or — streamed — a STREAM_CHUNK marked ``final``, which
is a success. Metered calls are those that entered through the gateway: their answers are
addressed to it (``target_module_id == "gateway"``). A call a module makes while serving one
(module to module) is not metered on its own: it is part of the outer call, whose handler time
(``compute_ms``) includes waiting for it, and the tenant asked for one call, not two.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal, InvalidOperation

import msgspec

from democratic_ai.contracts import ErrorCode, MCPMessage
from democratic_ai.contracts.headers import MCP_BYTES_IN, MCP_BYTES_OUT, MCP_COMPUTE_MS
from democratic_ai.contracts.messages import ERROR, RESPONSE, STREAM_CHUNK
from democratic_ai.contracts.usage_events import CallMetered, Metric, Outcome

__all__ = ["GATEWAY", "at_of", "is_metered", "outcome_of", "usage_of"]

GATEWAY = "gateway"  # the source id of calls that enter through the HTTP edge
_API_CALLS, _COMPUTE_MS, _BYTES_IN, _BYTES_OUT = (m.value for m in (Metric.API_CALLS, Metric.COMPUTE_MS,
                                                                    Metric.BYTES_IN, Metric.BYTES_OUT))
# What a module may claim for one call: 2**40 ms is 35 years of compute, 2**40 bytes a TiB. A
# bigint column (and the sums of the aggregates) cannot take an unbounded claim, and a real
# call comes nowhere near this one.
MAX_MEASURE = 2**40
_replace = msgspec.structs.replace
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RATE_LIMITED = ErrorCode.RATE_LIMITED.value


def is_metered(answer: MCPMessage) -> bool:
    """Whether ``answer`` closes a call the gateway meters."""
    kind = answer.type
    return answer.target_module_id == GATEWAY and (
        kind == RESPONSE or kind == ERROR or (kind == STREAM_CHUNK and answer.final)
    )


def outcome_of(answer: MCPMessage) -> Outcome:
    if answer.type != ERROR:
        return Outcome.SUCCESS  # a RESPONSE, or the final chunk of a stream that ended well
    # Only the gateway's own refusal is a rate limit; a module answering RATE_LIMITED (say, its
    # upstream throttled it) is a failed call like any other.
    if answer.error.code == _RATE_LIMITED and answer.source_module_id == GATEWAY:
        return Outcome.RATE_LIMITED
    return Outcome.FAILED


def at_of(answer: MCPMessage) -> datetime:
    """The answer's timestamp at microsecond precision (what Postgres keeps), so the value
    survives a round trip through the log and the database unchanged."""
    stamp = answer.timestamp
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


def _header(answer: MCPMessage, name: str) -> int:
    raw = answer.headers.get(name)
    if not raw:
        return 0
    try:
        # Whole units, rounded up: compute is billed by the started millisecond, and a module
        # may report fractions ("12.345").
        value = Decimal(raw).to_integral_value(rounding=ROUND_CEILING)
    except InvalidOperation:
        return 0  # a module that sends garbage is metered as if it sent nothing
    return min(max(0, int(value)), MAX_MEASURE) if value.is_finite() else 0


def _bytes_out(answer: MCPMessage) -> int:
    if MCP_BYTES_OUT in answer.headers:
        return _header(answer, MCP_BYTES_OUT)  # the whole of a stream, counted by the module
    return len(answer.payload) if answer.type == RESPONSE else 0


def usage_of(answer: MCPMessage) -> list[CallMetered]:
    """The usage events of the call ``answer`` closes: always one ``api_calls``, then each of
    ``compute_ms``, ``bytes_in`` and ``bytes_out`` that is not zero. A refused call used nothing
    but the refusal."""
    context = answer.context
    outcome = outcome_of(answer)
    source = answer.source_module_id
    call = CallMetered(
        tenant_id=context.tenant_id, metric=_API_CALLS, value=1, at=at_of(answer), call_id=answer.correlation_id,
        capability=answer.action, module_id="" if source == GATEWAY else source, user_id=context.user_id,
        api_key_id=context.api_key_id, outcome=outcome.value,
    )
    events = [call]
    if outcome is Outcome.RATE_LIMITED:
        return events
    for metric, value in (
        (_COMPUTE_MS, _header(answer, MCP_COMPUTE_MS)),
        (_BYTES_IN, _header(answer, MCP_BYTES_IN)),
        (_BYTES_OUT, _bytes_out(answer)),
    ):
        if value:
            events.append(_replace(call, metric=metric, value=value))  # a copy in C: this runs per call
    return events
