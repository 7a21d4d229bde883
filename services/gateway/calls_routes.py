"""The tenant's calls over HTTP, from the calls read model (:mod:`democratic_ai.projections.calls`).

    GET /v1/calls                  recent calls, newest first, filtered
    GET /v1/calls/stats            per-minute counts; p50/p95 latency and success rate per capability
    GET /v1/calls/live             each call as it ends, as Server-Sent Events (:mod:`.calls_live`)
    GET /v1/calls/{call_id}        one call with its request, its answer, its chunks and its metering

Payloads are not in PostgreSQL: the detail reads the request and the answer from the MCP stream
by the sequences the read model keeps, each cut at :data:`MAX_PAYLOAD` bytes (``truncated``).
Its metering is the call's usage events, from the usage read model. Who may read what is in
:mod:`.calls_items`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from aiohttp import web
from google.protobuf.message import DecodeError
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from democratic_ai.contracts import ErrorCode, MCPMessage, decode, error_details, subjects
from democratic_ai.contracts.messages import ERROR, STREAM_CHUNK
from democratic_ai.contracts.streams import MCP_STREAM
from democratic_ai.contracts.usage_events import Outcome, is_billable
from democratic_ai.schemas import tenant_transaction

from .bodies import respond
from .calls_items import COLUMNS, TENANT_QUERY, CallItem, bad, item_of, tenant_of, whole_number
from .calls_live import live_calls
from .calls_stats import MINUTES_QUERY, STATS_DESCRIPTION, WindowStats, window_minutes, window_stats
from .errors import ApiError
from .openapi import Query, operation
from .state import NC, POOL
from .wire import WireProgress, progress_of

__all__ = ["MAX_PAYLOAD", "add_calls_routes"]

MAX_PAYLOAD = 64 * 1024  # bytes of a payload the detail shows; a longer one is cut, and says so
MAX_SCAN = 512  # records a detail reads at most to find a stream's chunks
DEFAULT_LIMIT, MAX_LIMIT = 50, 200
_OUTCOMES = tuple(o.value for o in Outcome)
_METERING_MARGIN = timedelta(days=1)  # how far from a call's own times its usage may be stamped
_decode_json = msgspec.json.Decoder().decode


class CallList(msgspec.Struct):
    tenant_id: str
    calls: list[CallItem]  # newest first (by ``at``)


class CallPayload(msgspec.Struct):
    """A record of the call as the MCP stream holds it (its payload cut at 64 KiB)."""

    sequence: int  # in the MCP stream
    type: str  # request, response, error, stream_chunk
    content_type: str
    size: int  # bytes of the whole payload
    truncated: bool  # the payload is longer than 64 KiB: ``text`` holds its first 64 KiB
    data: msgspec.Raw | None  # the payload, when it is JSON and not truncated
    text: str | None  # otherwise: the payload as text (UTF-8, undecodable bytes replaced)
    error: dict[str, Any] | None  # an ERROR's code, message and details
    progress: WireProgress | None = None  # a stream chunk's progress (fraction 0-1, message)


class MeteredUsage(msgspec.Struct):
    metric: str
    value: int
    outcome: str
    at: datetime
    billable: bool  # whether this usage is billed (contracts.usage_events.BILLABLE)


class CallDetail(msgspec.Struct):
    tenant_id: str
    call: CallItem
    request: CallPayload | None  # null when the log no longer holds it (or never did: a refusal)
    answer: CallPayload | None  # the answer that ended the call; null while it runs
    chunks: list[CallPayload]  # a stream's chunks, in order, their payloads 64 KiB in all
    chunks_truncated: bool  # more chunks than shown (or payload beyond the 64 KiB)
    usage: list[MeteredUsage]  # the call's usage events, by metric


class CallStats(WindowStats):
    """The tenant's calls of the window (:func:`.calls_stats.window_stats`)."""

    tenant_id: str


def _since(raw: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise bad(
            "since", "'since' must be an ISO 8601 date-time with a time zone, e.g. 2025-06-01T12:00:00Z", raw
        ) from None
    if value.tzinfo is None:
        raise bad("since", "'since' needs a time zone, e.g. 2025-06-01T12:00:00Z", raw)
    return value.astimezone(UTC)


_LIST_QUERY = (
    TENANT_QUERY,
    Query("capability", "Only calls of this capability."),
    Query("outcome", f"Only calls that ended so: {', '.join(_OUTCOMES)}.", {"type": "string", "enum": list(_OUTCOMES)}),
    Query("since", "Only calls that began at or after this ISO 8601 date-time (with a time zone)."),
    Query(
        "limit",
        f"How many calls, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT}).",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
    ),
)


@operation(
    "The tenant's recent calls, newest first, from the calls read model (needs billing:read).",
    {200: CallList},
    query=_LIST_QUERY,
    description="A call that still runs has outcome and ended_at null. Outcomes follow the metering rules"
    " (contracts/call_usage.py): success, failed, timeout, cancelled, rate_limited. Bad parameters"
    " answer 400 BAD_REQUEST with details.parameter.",
)
async def list_calls(request: web.Request) -> web.Response:
    _, tenant = tenant_of(request)
    query = request.query
    filters, args = [], []
    capability = query.get("capability") or None
    if capability is not None:
        try:
            subjects.validate_capability(capability)
        except subjects.InvalidSubjectToken as exc:
            raise bad("capability", str(exc), capability) from None
        args.append(capability)
        filters.append(f"capability = ${len(args)}")
    outcome = query.get("outcome") or None
    if outcome is not None:
        if outcome not in _OUTCOMES:
            raise bad("outcome", f"'outcome' must be one of {', '.join(_OUTCOMES)}", outcome)
        args.append(outcome)
        filters.append(f"outcome = ${len(args)}")
    if query.get("since"):
        args.append(_since(query["since"]))
        filters.append(f"at >= ${len(args)}")
    args.append(whole_number("limit", query.get("limit"), DEFAULT_LIMIT, MAX_LIMIT))
    where = " WHERE " + " AND ".join(filters) if filters else ""
    sql = f"SELECT {COLUMNS} FROM calls{where} ORDER BY at DESC, call_id DESC LIMIT ${len(args)}"
    async with tenant_transaction(request.app[POOL], tenant) as conn:
        rows = await conn.fetch(sql, *args)
    return respond(CallList(tenant, [item_of(row) for row in rows]))


_KINDS = {1: "request", 2: "response", 4: "error", 5: "stream_chunk"}


def _payload_of(sequence: int, message: MCPMessage, limit: int = MAX_PAYLOAD) -> CallPayload:
    payload = message.payload
    size = len(payload)
    truncated = size > limit
    content_type = message.content_type or "application/json"
    data = text = None
    if payload and not truncated and content_type == "application/json":
        try:
            _decode_json(payload)
            data = msgspec.Raw(payload)
        except msgspec.DecodeError:
            pass  # not what its content type says: shown as text
    if payload and data is None:
        text = payload[:limit].decode("utf-8", "replace")
    error = None
    if message.type == ERROR:
        error = {"code": message.error.code, "message": message.error.message, "details": error_details(message)}
    return CallPayload(
        sequence,
        _KINDS.get(message.type, "other"),
        content_type,
        size,
        truncated,
        data,
        text,
        error,
        progress_of(message),
    )


async def _record(request: web.Request, sequence: int | None, subject: str, call_id: str) -> CallPayload | None:
    """The record at ``sequence`` of the MCP stream, if it is still there and is this call's."""
    if sequence is None:
        return None
    try:
        stored = await request.app[NC].jetstream().get_msg(MCP_STREAM, seq=sequence)
    except NotFoundError:
        return None  # aged out (the stream keeps 30 days) or purged
    except (NatsError, TimeoutError) as exc:
        raise ApiError(ErrorCode.NOT_READY, f"the MCP stream could not be read: {exc}") from None
    try:
        message = decode(stored.data or b"")
    except DecodeError:
        return None
    if stored.subject != subject or message.correlation_id != call_id:
        return None  # never expected: the read model names this call's records only
    return _payload_of(sequence, message)


def _chunk_of(sequence: int, data: bytes, call_id: str, limit: int) -> CallPayload | None:
    """The record as a chunk of call ``call_id`` (payload cut at ``limit``), or None if it is not one."""
    try:
        message = decode(data)
    except DecodeError:
        return None
    if message.correlation_id != call_id or message.type != STREAM_CHUNK:
        return None
    if not (message.payload or message.HasField("progress")):
        return None
    return _payload_of(sequence, message, limit)


async def _chunks(request: web.Request, row: Any, subject: str, call_id: str) -> tuple[list[CallPayload], bool]:
    """The call's stream chunks (those with a payload or progress), read from the MCP stream
    between its request and its end: the records on its answer subject, at most
    :data:`MAX_SCAN` of them (other calls of the same tenant and capability interleave), their
    payloads cut to :data:`MAX_PAYLOAD` in all. Whether more chunks exist than are returned."""
    first, last, expected = row["request_seq"], row["answer_seq"], row["chunks"]
    if not expected or first is None:
        return [], False
    js = request.app[NC].jetstream()
    found: list[CallPayload] = []
    budget, sequence = MAX_PAYLOAD, first + 1
    for _ in range(MAX_SCAN):
        try:
            stored = await js.get_msg(MCP_STREAM, seq=sequence, subject=subject, next=True)
        except NotFoundError:
            return found, len(found) < expected  # nothing more on the subject (aged out, purged)
        except (NatsError, TimeoutError) as exc:
            raise ApiError(ErrorCode.NOT_READY, f"the MCP stream could not be read: {exc}") from None
        if stored.seq is None or (last is not None and stored.seq > last):
            break
        sequence = stored.seq + 1
        chunk = _chunk_of(stored.seq, stored.data or b"", call_id, budget)
        if chunk is not None:
            if budget <= 0:
                return found, True
            budget -= min(chunk.size, budget)
            found.append(chunk)
            if len(found) >= expected:
                return found, chunk.truncated
        if stored.seq == last:
            break  # the end: a final chunk with a payload is the last chunk too
    return found, len(found) < expected


@operation(
    "One call of the tenant: its row, its request and answer from the MCP stream, and its metering.",
    {200: CallDetail},
    query=(TENANT_QUERY,),
    description=f"Payloads longer than {MAX_PAYLOAD} bytes are cut (truncated: true, the start in 'text');"
    " a stream's chunks share one such budget."
    " Another tenant's call, or an unknown one, answers 404 NOT_FOUND.",
)
async def get_call(request: web.Request) -> web.Response:
    _, tenant = tenant_of(request)
    call_id = request.match_info["call_id"]
    async with tenant_transaction(request.app[POOL], tenant) as conn:
        row = await conn.fetchrow(f"SELECT {COLUMNS} FROM calls WHERE call_id = $1", call_id)
        if row is None:
            raise ApiError(ErrorCode.NOT_FOUND, f"no call {call_id!r}", {"call_id": call_id})
        end = row["ended_at"] or row["at"]
        usage = await conn.fetch(
            "SELECT metric, value, outcome, at FROM usage_events WHERE call_id = $1 AND at >= $2 AND at <= $3"
            " ORDER BY metric",
            call_id,
            row["at"] - _METERING_MARGIN,
            end + _METERING_MARGIN,
        )
    capability = row["capability"]
    answers = subjects.record_response(tenant, capability)
    chunks, more = await _chunks(request, row, answers, call_id)
    return respond(
        CallDetail(
            tenant,
            item_of(row),
            await _record(request, row["request_seq"], subjects.record_request(tenant, capability), call_id),
            await _record(request, row["answer_seq"], answers, call_id),
            chunks,
            more,
            [
                MeteredUsage(u["metric"], u["value"], u["outcome"], u["at"], is_billable(u["metric"], u["outcome"]))
                for u in usage
            ],
        )
    )


@operation(
    "Per-minute call and error counts of the last minutes, and latency and success rate per capability.",
    {200: CallStats},
    query=(TENANT_QUERY, MINUTES_QUERY),
    description=STATS_DESCRIPTION,
)
async def call_stats(request: web.Request) -> web.Response:
    _, tenant = tenant_of(request)
    minutes = window_minutes(request)
    async with tenant_transaction(request.app[POOL], tenant) as conn:
        stats = await window_stats(conn, CallStats, minutes, tenant_id=tenant)
    return respond(stats)


def add_calls_routes(app: web.Application) -> None:
    # The fixed paths first: aiohttp matches routes in the order they were added.
    app.router.add_get("/v1/calls", list_calls)
    app.router.add_get("/v1/calls/stats", call_stats)
    app.router.add_get("/v1/calls/live", live_calls)
    app.router.add_get("/v1/calls/{call_id}", get_call)
