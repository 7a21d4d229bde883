"""``GET /v1/calls/live``: each call of the tenant as it ends, as Server-Sent Events.

::

    id: 4711
    event: call
    data: {"call_id": "...", "capability": "...", "outcome": "success", ...}   (a CallItem)

    : keep-alive

The feed follows the calls read model, not the bus: every ``POLL_SECONDS`` it asks for the
tenant's calls whose end is past the last one sent, in the order the projection folded them
(``answer_seq``, the MCP stream sequence of the end, which is the event's ``id``). So an event is
the very item ``GET /v1/calls`` lists, a reader sees only its tenant's calls (Row Level
Security), and a reconnecting ``EventSource`` resumes after the last event it got
(``Last-Event-ID``). Without that header the feed starts with the calls that end after it opened.
A call whose end the gateway later outranks (its timeout beat the module's late answer) is sent
again with its final outcome.

Bounded: a connection holds one cursor and at most ``BATCH`` rows at a time, and the next poll
waits until the previous events are written, so a slow reader lags instead of filling memory. A
comment every ``KEEP_ALIVE_SECONDS`` keeps proxies from closing an idle feed. A client that goes
away cancels the handler (the runner's ``handler_cancellation``) or fails its next write; either
ends the loop. While PostgreSQL cannot be reached the feed keeps its cursor and sends keep-alives.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
from aiohttp import web

from democratic_ai.contracts import ErrorCode
from democratic_ai.schemas import tenant_transaction

from .calls_items import COLUMNS, TENANT_QUERY, CallItem, item_of, tenant_of
from .errors import ApiError
from .openapi import operation
from .state import POOL
from .wire import sse_event

__all__ = ["BATCH", "KEEP_ALIVE_SECONDS", "POLL_SECONDS", "live_calls"]

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
KEEP_ALIVE_SECONDS = 15.0
BATCH = 100
_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tell nginx-like proxies not to hold events back
}
_UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)


def _cursor(raw: str | None) -> int | None:
    """The ``Last-Event-ID`` a reconnecting client sends: the sequence to resume after."""
    if raw is None:
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        raise ApiError(ErrorCode.BAD_REQUEST, "Last-Event-ID must be the id of an event of this feed", {"value": raw})
    return int(raw)


@operation(
    "Each call of the tenant as it ends, as Server-Sent Events (event 'call', data a CallItem).",
    {200: CallItem},
    query=(TENANT_QUERY,),
    other_content={"text/event-stream": {"type": "string", "description": "event: call, data: a CallItem."}},
    description=f"A comment every {KEEP_ALIVE_SECONDS:g} s keeps the feed open. Each event's id is the MCP"
    " sequence of the call's end; send it back as Last-Event-ID to resume after it. Needs billing:read.",
)
async def live_calls(request: web.Request) -> web.StreamResponse:
    _, tenant = tenant_of(request)
    pool = request.app[POOL]
    cursor = _cursor(request.headers.get("Last-Event-ID"))
    if cursor is None:
        async with tenant_transaction(pool, tenant) as conn:
            cursor = await conn.fetchval("SELECT coalesce(max(answer_seq), 0) FROM calls") or 0
    response = web.StreamResponse(headers=_HEADERS)
    await response.prepare(request)
    try:
        await _follow(response, pool, tenant, cursor)
    except ConnectionResetError:
        pass  # the client went away between two writes
    return response


async def _follow(response: web.StreamResponse, pool: asyncpg.Pool, tenant: str, cursor: int) -> None:
    last_write = time.monotonic()
    while True:
        try:
            async with tenant_transaction(pool, tenant) as conn:
                rows = await conn.fetch(
                    f"SELECT {COLUMNS} FROM calls WHERE answer_seq > $1 ORDER BY answer_seq LIMIT {BATCH}", cursor
                )
        except _UNREACHABLE as exc:
            log.warning("live calls of %s: the read model cannot be read (%r); retrying", tenant, exc)
            rows = []
        for row in rows:
            cursor = row["answer_seq"]
            await response.write(b"id: " + str(cursor).encode() + b"\n" + sse_event("call", item_of(row)))
            last_write = time.monotonic()
        if len(rows) == BATCH:
            continue  # more are waiting: no pause
        if time.monotonic() - last_write >= KEEP_ALIVE_SECONDS:
            await response.write(b": keep-alive\n\n")
            last_write = time.monotonic()
        await asyncio.sleep(POLL_SECONDS)
