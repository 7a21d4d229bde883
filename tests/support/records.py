"""The MCP stream's records of calls, as a test reads them."""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from democratic_ai.contracts import MCPMessage, decode, subjects


async def last_answer(nc: NATS, tenant: str, capability: str) -> MCPMessage | None:
    """The last answer recorded for ``tenant``'s calls of ``capability``, or ``None`` before there is one."""
    try:
        record = await nc.jetstream().get_last_msg("MCP", subjects.record_response(tenant, capability))
    except NotFoundError:
        return None
    return decode(record.data)
