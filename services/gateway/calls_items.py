"""What the calls endpoints share: the permission, the tenant a request reads, and a call as a list item.

Reading a tenant's calls needs ``billing:read``, the permission that reads its usage
(:mod:`.usage_routes`): a call is the usage at the resolution of one call, and its detail holds
the payloads of every user's calls, which a ``user`` or ``viewer`` must not read. Tenant admins
hold it; super admins may name any tenant with ``?tenant=``. Another tenant's call answers 404:
reads run in a transaction scoped to the tenant, so Row Level Security hides its rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec
from aiohttp import web

from democratic_ai.services.identity import Principal

from .auth import queried_tenant, require
from .errors import bad_parameter as bad
from .openapi import Query

__all__ = [
    "CALLS_PERMISSION",
    "COLUMNS",
    "TENANT_QUERY",
    "CallError",
    "CallItem",
    "bad",
    "item_of",
    "tenant_of",
    "whole_number",
]

CALLS_PERMISSION = "billing:read"
TENANT_QUERY = Query("tenant", "The tenant (super admins only; anyone else gets their own).")
COLUMNS = (
    "call_id, capability, module_id, transport, user_id, api_key_id, at, started_at, ended_at, duration_ms,"
    " outcome, error_code, error_message, chunks, request_seq, answer_seq"
)


class CallError(msgspec.Struct):
    code: str  # the stable ErrorCode of the answer that ended the call
    message: str


class CallItem(msgspec.Struct):
    """One call, as the list, the live feed and the detail show it."""

    call_id: str
    capability: str
    module_id: str | None  # the module that answered; null when none did (no module, refused, timed out)
    transport: str | None  # http, sse, websocket or mcp; null when not recorded
    user_id: str | None
    api_key_id: str | None
    at: datetime  # when it began: started_at, or ended_at when no request was recorded (a refusal)
    started_at: datetime | None
    ended_at: datetime | None  # null while the call runs
    duration_ms: float | None  # ended_at - started_at, to the microsecond; null unless both are known
    outcome: str | None  # success, failed, timeout, cancelled, rate_limited; null while the call runs
    error: CallError | None  # the code and message of an ERROR end
    chunks: int  # stream chunks that carried a payload or progress
    request_seq: int | None  # MCP stream sequence of the request record
    answer_seq: int | None  # MCP stream sequence of the answer that ended the call


def item_of(row: Mapping[str, Any]) -> CallItem:
    """A ``calls`` row as the API shows it."""
    code = row["error_code"]
    return CallItem(
        call_id=row["call_id"],
        capability=row["capability"],
        module_id=row["module_id"],
        transport=row["transport"],
        user_id=row["user_id"] or None,
        api_key_id=row["api_key_id"] or None,
        at=row["at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        duration_ms=row["duration_ms"],
        outcome=row["outcome"],
        error=None if code is None else CallError(code, row["error_message"] or ""),
        chunks=row["chunks"],
        request_seq=row["request_seq"],
        answer_seq=row["answer_seq"],
    )


def tenant_of(request: web.Request) -> tuple[Principal, str]:
    """The caller (who must hold :data:`CALLS_PERMISSION`) and the tenant whose calls it reads."""
    principal = require(request, CALLS_PERMISSION)
    return principal, queried_tenant(request, principal)


def whole_number(parameter: str, raw: str | None, default: int, highest: int) -> int:
    """The query parameter ``parameter`` as a whole number from 1 to ``highest`` (``default`` when absent)."""
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= highest:
        raise bad(parameter, f"{parameter!r} must be a whole number from 1 to {highest}", raw)
    return int(raw)
