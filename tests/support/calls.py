"""The calls read model as tests read it, and MCP records of calls written by hand."""

from __future__ import annotations

from datetime import datetime

import asyncpg
from nats.aio.client import Client as NATS

from democratic_ai.contracts import ErrorCode, MCPMessage, error_reply, new_request, reply, subjects
from democratic_ai.contracts.call_usage import GATEWAY

from support.projections import caught_up
from support.waiting import eventually


async def call_rows(pool: asyncpg.Pool, tenant: str) -> dict[str, asyncpg.Record]:
    """Every row of ``tenant`` in ``calls`` (read as the owner), by call id."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM calls WHERE tenant_id = $1", tenant)
    return {row["call_id"]: row for row in rows}


async def ended_calls(nc: NATS, pool: asyncpg.Pool, tenant: str, count: int) -> dict[str, asyncpg.Record]:
    """The rows of ``tenant`` once ``count`` of its calls have ended in the read model."""

    async def ended() -> dict[str, asyncpg.Record] | None:
        await caught_up(nc, pool, "calls")
        rows = await call_rows(pool, tenant)
        return rows if sum(r["outcome"] is not None for r in rows.values()) >= count else None

    return await eventually(ended, f"{count} calls of {tenant} ended in the calls read model", timeout=15)


def _stamp(message: MCPMessage, at: datetime) -> MCPMessage:
    message.timestamp.FromDatetime(at)
    return message


def request_record(tenant: str, capability: str, at: datetime, payload: bytes = b'{"x": 1}') -> MCPMessage:
    """A gateway call's REQUEST, stamped ``at``."""
    return _stamp(new_request(capability, payload, tenant_id=tenant, source_module_id=GATEWAY), at)


def response_record(request: MCPMessage, at: datetime, module: str = "synthetic-module") -> MCPMessage:
    """The module's RESPONSE to ``request``, stamped ``at``."""
    return _stamp(reply(request, b'{"ok": true}', source_module_id=module), at)


def error_record(request: MCPMessage, at: datetime, code: ErrorCode, source: str = GATEWAY) -> MCPMessage:
    return _stamp(error_reply(request, code, f"{code.value} by hand", source_module_id=source), at)


async def publish_records(nc: NATS, *messages: MCPMessage) -> int:
    """Record ``messages`` in the MCP stream as the platform does (core NATS, in this order);
    returns the stream's last sequence once they are stored."""
    js = nc.jetstream()
    before = (await js.stream_info("MCP")).state.last_seq
    for message in messages:
        tenant, capability = message.context.tenant_id, message.action
        subject = (
            subjects.record_request(tenant, capability)
            if message.source_module_id == GATEWAY and not message.target_module_id
            else subjects.record_response(tenant, capability)
        )
        await nc.publish(subject, message.SerializeToString())
    await nc.flush()

    async def stored() -> int:
        last = (await js.stream_info("MCP")).state.last_seq
        return last if last >= before + len(messages) else 0

    return await eventually(stored, f"{len(messages)} records stored in MCP", timeout=5)
