"""Admitting a call at the edge: one rule for the invoke endpoint, its SSE form and the WebSocket.

Every call is admitted by the rate limiter before it is routed. A refused call still ends like
any other: its RATE_LIMITED answer is recorded in the MCP log and metered (as ``rate_limited``,
not billable), so refusals are visible in usage and replays.
"""

from __future__ import annotations

from aiohttp import web

from democratic_ai.contracts import ErrorCode, MCPMessage, error_reply, subjects
from democratic_ai.services.identity import Principal
from democratic_ai.services.metering import GATEWAY, AdmissionUnavailable, Decision

from .errors import ApiError
from .ratelimit_headers import retry_after_header
from .state import METERING, NC

__all__ = ["admit", "refusal"]


async def admit(app: web.Application, principal: Principal, call: MCPMessage) -> Decision:
    """Whether ``call`` may go; a NOT_READY error while this gateway cannot yet decide."""
    try:
        return await app[METERING].admit(principal, len(call.payload))
    except AdmissionUnavailable as exc:
        raise ApiError(ErrorCode.NOT_READY, exc.message) from None


async def refusal(app: web.Application, call: MCPMessage, decision: Decision) -> MCPMessage:
    """The RATE_LIMITED answer to a refused call, recorded and metered like any call's end.

    Its details name the refusing policy and the whole seconds to wait (``Retry-After``).
    """
    details = {"policy": decision.refused_by, "retry_after": int(retry_after_header(decision.retry_after))}
    answer = error_reply(call, ErrorCode.RATE_LIMITED, decision.message, source_module_id=GATEWAY, details=details)
    await app[NC].publish(subjects.record_response(call.context.tenant_id, call.action), answer.SerializeToString())
    app[METERING].record(answer)
    return answer
