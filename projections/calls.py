"""The calls read model: one row per call that entered through the gateway, folded from the MCP log.

A call leaves records in the MCP stream: its REQUEST on ``mcp.req.<tenant>.<capability>`` (the
router records it before sending the call), and on ``mcp.res.<tenant>.<capability>`` its stream
chunks and the answer that ended it — a RESPONSE, the ``final`` chunk, or an ERROR (the module's,
or the gateway's own: no module, timeout, hang-up, refusal). Only gateway calls are folded: a
request the gateway sent (``source_module_id == "gateway"``) and answers addressed to it, as
metering counts them (:func:`~democratic_ai.contracts.call_usage.is_metered`); a module's nested
call, CANCEL records and events are skipped.

**How a call ended** follows the metering rules of :mod:`democratic_ai.contracts.call_usage`:
the outcome is :func:`~democratic_ai.contracts.call_usage.outcome_of` the end, and when a call
has two ends — the gateway's own (it stopped waiting: the ttl passed, the client hung up) and the
module's later answer — the gateway's is the one its client got, so it wins whichever came first
in the stream. Otherwise the first end stays.

**Exactly the same rows whatever the batches.** Each batch loads the rows of the calls it touches
(one query), applies its records to them one by one in stream order in Python, and writes them
back (one statement). The result is the sequential fold of the stream, so a rebuild, or a batch
split by the quarantine, gives the same rows as the live runner. Times are the messages' own
timestamps (as the usage events', so the two agree), not the server's arrival times.

A record that is not an MCP message, or whose subject does not match its tenant, capability or
call id, raises :class:`~.errors.UnfoldableEvent` and is quarantined; the projection goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg
import msgspec
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg

from democratic_ai.contracts import MCPMessage, decode, subjects
from democratic_ai.contracts.call_usage import GATEWAY, at_of, is_metered, outcome_of
from democratic_ai.contracts.headers import MCP_TRANSPORT
from democratic_ai.contracts.messages import ERROR, REQUEST, STREAM_CHUNK
from democratic_ai.contracts.streams import MCP_STREAM

from .errors import UnfoldableEvent

__all__ = ["CallRow", "CallsProjection"]

_MAX_ID = 128  # longest call id folded: the platform's are UUIDs
_MAX_MESSAGE = 1000  # an error message is kept this long; the whole answer stays in the log
_MICROSECOND = timedelta(microseconds=1)


class CallRow(msgspec.Struct):
    """One row of ``calls`` (schemas/sql/016_calls.sql), as the fold merges it."""

    tenant_id: str
    call_id: str
    capability: str
    at: datetime
    module_id: str | None = None
    transport: str | None = None
    user_id: str = ""
    api_key_id: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_ms: float | None = None
    outcome: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    chunks: int = 0
    request_seq: int | None = None
    answer_seq: int | None = None
    ended_by_gateway: bool = False


_COLUMNS = tuple(CallRow.__struct_fields__)
_TYPES = {
    "at": "timestamptz",
    "started_at": "timestamptz",
    "ended_at": "timestamptz",
    "duration_ms": "double precision",
    "chunks": "integer",
    "request_seq": "bigint",
    "answer_seq": "bigint",
    "ended_by_gateway": "boolean",
}
_RECORD = ", ".join(f"{c} {_TYPES.get(c, 'text')}" for c in _COLUMNS)
_LOAD = (
    f"SELECT {', '.join(_COLUMNS)} FROM calls"
    " WHERE (tenant_id, call_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
)
_STORE = (
    f"INSERT INTO calls ({', '.join(_COLUMNS)})"
    f" SELECT {', '.join(_COLUMNS)} FROM json_to_recordset(convert_from($1::bytea, 'UTF8')::json) AS t({_RECORD})"
    " ON CONFLICT (tenant_id, call_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c not in ("tenant_id", "call_id"))
)
_encode = msgspec.json.Encoder().encode


def _text(value: str) -> str:
    """A string PostgreSQL stores as it is: no NUL, at most :data:`_MAX_MESSAGE` characters."""
    return value.replace("\x00", "\\0")[:_MAX_MESSAGE]


def _parse(msg: Msg) -> tuple[str, MCPMessage] | None:
    """``(kind, message)`` of a record the model folds (``req`` or ``res``), or None to skip it."""
    _, kind, tenant, capability = [*msg.subject.split(".", 3), "", "", ""][:4]
    if kind not in ("req", "res"):
        return None  # mcp.evt: events and broadcasts are not calls
    try:
        message = decode(msg.data)
    except DecodeError:
        raise UnfoldableEvent(f"{msg.subject}: the record is not an MCP message") from None
    if kind == "req":
        if message.type != REQUEST or message.source_module_id != GATEWAY:
            return None  # a CANCEL, or a module's own nested call
    elif message.target_module_id != GATEWAY:
        return None  # an answer to a module's nested call
    call_id = message.correlation_id
    if message.context.tenant_id != tenant or message.action != capability:
        raise UnfoldableEvent(
            f"{msg.subject}: the record is of tenant {message.context.tenant_id!r} and capability"
            f" {message.action!r}, not those of its subject"
        )
    if not call_id or len(call_id) > _MAX_ID or "\x00" in call_id:
        raise UnfoldableEvent(f"{msg.subject}: the record's call id is empty, over {_MAX_ID} characters, or has NUL")
    return kind, message


def _apply(row: CallRow, kind: str, message: MCPMessage, sequence: int) -> None:
    """Fold one record of the call into its row (see the module docstring for the rules)."""
    at = at_of(message)
    source = message.source_module_id
    context = message.context
    if kind == "req":
        if row.request_seq is not None:
            return  # the same request recorded twice: the first stays
        row.request_seq, row.started_at = sequence, at
        row.user_id, row.api_key_id = _text(context.user_id), _text(context.api_key_id)
        row.transport = _text(message.headers.get(MCP_TRANSPORT, "")) or row.transport
    else:
        if source != GATEWAY and row.module_id is None:
            row.module_id = _text(source) or None
        if message.type == STREAM_CHUNK and (message.payload or message.HasField("progress")):
            row.chunks += 1
        by_gateway = source == GATEWAY
        if is_metered(message) and (row.answer_seq is None or (by_gateway and not row.ended_by_gateway)):
            row.answer_seq, row.ended_at, row.ended_by_gateway = sequence, at, by_gateway
            row.outcome = outcome_of(message).value
            failed = message.type == ERROR
            row.error_code = _text(message.error.code) if failed else None
            row.error_message = _text(message.error.message) if failed else None
        if row.request_seq is None:  # no request recorded (a refusal): what the answer knows
            row.user_id = row.user_id or _text(context.user_id)
            row.api_key_id = row.api_key_id or _text(context.api_key_id)
            row.transport = row.transport or _text(message.headers.get(MCP_TRANSPORT, "")) or None
    row.at = row.started_at if row.started_at is not None else min(row.at, at)
    if row.started_at is not None and row.ended_at is not None:
        # Whole microseconds (what both times hold), so the value is exact to the microsecond.
        row.duration_ms = max(0, (row.ended_at - row.started_at) // _MICROSECOND) / 1000


class CallsProjection:
    name = "calls"
    stream = MCP_STREAM
    filter_subject = subjects.records()  # requests, answers and events: the events are skipped
    partitions = None
    tables = ("calls",)

    async def apply(self, conn: asyncpg.Connection, events: Sequence[Msg]) -> None:
        records = []
        for msg in events:
            parsed = _parse(msg)
            if parsed is not None:
                records.append((msg.metadata.sequence.stream, *parsed))
        if not records:
            return
        keys = list({(m.context.tenant_id, m.correlation_id) for _, _, m in records})
        loaded = await conn.fetch(_LOAD, [k[0] for k in keys], [k[1] for k in keys])
        rows = {(r["tenant_id"], r["call_id"]): CallRow(**dict(r)) for r in loaded}
        for sequence, kind, message in records:
            key = (message.context.tenant_id, message.correlation_id)
            row = rows.get(key)
            if row is None:
                row = rows[key] = CallRow(
                    tenant_id=key[0], call_id=key[1], capability=message.action, at=at_of(message)
                )
            _apply(row, kind, message, sequence)
        await conn.execute(_STORE, _encode(list(rows.values())))
