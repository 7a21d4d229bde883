"""What a call used, derived from how it ended.

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

**One outcome per call**, decided here alone (:func:`outcome_of`) for every way a call comes in
(JSON invoke, SSE, WebSocket) and for the recovery sweep, and carried by every event of the call:

    success       a RESPONSE, or a stream's ``final`` chunk     every metric billable
    cancelled     ERROR CANCELLED: the caller cancelled or      its compute_ms billable: the
                  hung up (the module's confirmation, or the    caller asked for the work and
                  gateway's own when none came)                 stopped it
    timeout       ERROR TIMEOUT: the call's ttl passed          none billable
    rate_limited  the gateway's own RATE_LIMITED refusal        none billable (only api_calls)
    failed        any other ERROR (a module's RATE_LIMITED,     none billable
                  say: its upstream throttled it; the
                  MODULE_UNAVAILABLE of a module that stopped
                  before the call finished)

A call can have two ends: the gateway's own (it stopped waiting: the ttl passed, the client hung
up) and the module's, which comes later. The call's outcome is the end its client got — the
gateway's — and the module's later answer only adds the measures the gateway's lacked (the
compute time, the bytes sent), under that same outcome: ``usage_of(first, later, outcome=…)``,
which is how the recovery sweep completes such a call (:mod:`democratic_ai.projections.recovery`). So a call that timed
out is ``timeout`` in every metric, however late its module answered.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal, InvalidOperation

import msgspec

from .errors import ErrorCode
from .headers import MCP_BYTES_IN, MCP_BYTES_OUT, MCP_COMPUTE_MS
from .mcp_v2_pb2 import MCPMessage
from .messages import ERROR, RESPONSE, STREAM_CHUNK
from .usage_events import CallMetered, Metric, Outcome

__all__ = ["GATEWAY", "at_of", "is_metered", "outcome_of", "usage_of"]

GATEWAY = "gateway"  # the source id of calls that enter through the HTTP edge
_API_CALLS, _COMPUTE_MS, _BYTES_IN, _BYTES_OUT = (
    m.value for m in (Metric.API_CALLS, Metric.COMPUTE_MS, Metric.BYTES_IN, Metric.BYTES_OUT)
)
# What a module may claim for one call: 2**40 ms is 35 years of compute, 2**40 bytes a TiB. A
# bigint column (and the sums of the aggregates) cannot take an unbounded claim, and a real
# call comes nowhere near this one.
MAX_MEASURE = 2**40
_replace = msgspec.structs.replace
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RATE_LIMITED = ErrorCode.RATE_LIMITED.value
# An ERROR's code → the call's outcome; any other code is a failure. RATE_LIMITED is here only
# when the gateway answered it (see outcome_of).
_ENDED_BY = {ErrorCode.CANCELLED.value: Outcome.CANCELLED, ErrorCode.TIMEOUT.value: Outcome.TIMEOUT}


def is_metered(answer: MCPMessage) -> bool:
    """Whether ``answer`` closes a call the gateway meters."""
    kind = answer.type
    return answer.target_module_id == GATEWAY and (kind in (RESPONSE, ERROR) or (kind == STREAM_CHUNK and answer.final))


def outcome_of(answer: MCPMessage) -> Outcome:
    """The outcome of the call ``answer`` ends: the one rule (see the module's docstring)."""
    if answer.type != ERROR:
        return Outcome.SUCCESS  # a RESPONSE, or the final chunk of a stream that ended well
    code = answer.error.code
    # Only the gateway's own refusal is a rate limit; a module answering RATE_LIMITED (say, its
    # upstream throttled it) is a failed call like any other.
    if code == _RATE_LIMITED:
        return Outcome.RATE_LIMITED if answer.source_module_id == GATEWAY else Outcome.FAILED
    return _ENDED_BY.get(code, Outcome.FAILED)


def at_of(answer: MCPMessage) -> datetime:
    """The answer's timestamp at microsecond precision (what Postgres keeps), so the value
    survives a round trip through the log and the database unchanged."""
    stamp = answer.timestamp
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


def _header(answer: MCPMessage, name: str) -> int:
    raw = answer.headers.get(name)
    if not raw:
        return 0
    if raw.isdigit() and raw.isascii():  # the usual case: whole units, no Decimal needed
        return min(int(raw), MAX_MEASURE)
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


def usage_of(answer: MCPMessage, *later: MCPMessage, outcome: Outcome | None = None) -> list[CallMetered]:
    """The usage events of the call ``answer`` ends: always one ``api_calls``, then each of
    ``compute_ms``, ``bytes_in`` and ``bytes_out`` that is not zero. A refused call used nothing
    but the refusal.

    Every event carries one outcome: ``outcome`` when given (the one the call was metered with
    already), else :func:`outcome_of` ``answer``. ``later`` are other ends of the same call that
    came after ``answer`` (a module's answer once the gateway had given up): a measure ``answer``
    lacks is taken from the first of them that has it, stamped and attributed as that answer.
    """
    context = answer.context
    if outcome is None:
        outcome = outcome_of(answer)
    source = answer.source_module_id
    call = CallMetered(
        tenant_id=context.tenant_id,
        metric=_API_CALLS,
        value=1,
        at=at_of(answer),
        call_id=answer.correlation_id,
        capability=answer.action,
        module_id="" if source == GATEWAY else source,
        user_id=context.user_id,
        api_key_id=context.api_key_id,
        outcome=outcome.value,
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
        elif later:
            events += _measured_later(call, metric, later)
    return events


def _measured_later(call: CallMetered, metric: str, later: tuple[MCPMessage, ...]) -> list[CallMetered]:
    """``metric`` of the call from the first later answer that measured it (none if none did)."""
    for answer in later:
        if metric == _BYTES_OUT:
            value = _bytes_out(answer)
        else:
            value = _header(answer, MCP_COMPUTE_MS if metric == _COMPUTE_MS else MCP_BYTES_IN)
        if value:
            source = answer.source_module_id
            return [
                _replace(
                    call, metric=metric, value=value, at=at_of(answer), module_id="" if source == GATEWAY else source
                )
            ]
    return []
