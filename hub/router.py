"""The call path: decide a call's subject, record it, carry it, and turn failures into errors.

The router is a library, not a process: the gateway and the SDK client run it in-process, so
a call costs one NATS request and no extra hop. Routing by capability publishes on
``mcp.call.<tenant>.<capability>``, where every replica of every module serving it shares one
queue group; routing to a module publishes on ``mcp.direct.<module>.<tenant>.<capability>``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError, TimeoutError

from democratic_ai.contracts import DEFAULT_TTL_SECONDS, ErrorCode, MCPMessage, decode, error_reply
from democratic_ai.contracts import subjects, tracing
from democratic_ai.contracts.usage_events import BYTES_IN_HEADER

__all__ = ["Router"]

log = logging.getLogger(__name__)


class Router:
    """Route MCP requests over NATS and always answer with a RESPONSE or an ERROR message.

    ``is_registered(capability)`` tells a capability that no module ever registered (an error
    of the caller: ``CAPABILITY_NOT_FOUND``) from one whose modules are all gone right now
    (``CAPABILITY_UNAVAILABLE``). It is consulted only after NATS answered "no responders".
    """

    def __init__(
        self,
        nc: NATS,
        *,
        source_id: str,
        is_registered: Callable[[str], bool] | None = None,
    ) -> None:
        self._nc = nc
        self._source_id = source_id
        self._is_registered = is_registered

    async def call(self, request: MCPMessage) -> MCPMessage:
        """Carry ``request`` to a module and return its answer, or the routing error."""
        if tracing.tracing_enabled():
            with tracing.tracer.start_as_current_span(f"hub route {request.action}"):
                return await self._call(request)
        return await self._call(request)

    async def _call(self, request: MCPMessage) -> MCPMessage:
        tenant = request.context.tenant_id
        action = request.action
        if request.target_module_id:
            subject = subjects.direct(request.target_module_id, tenant, action)
        else:
            subject = subjects.call(tenant, action)
        timeout = float(request.ttl or DEFAULT_TTL_SECONDS)
        data = request.SerializeToString()
        headers = tracing.inject({}) if tracing.tracing_enabled() else None

        # The record goes first on the same connection, so the log holds the request before
        # any module can answer it.
        await self._nc.publish(subjects.record_request(tenant, action), data, headers=headers)
        try:
            answer = await self._nc.request(subject, data, timeout=timeout, headers=headers)
        except NoRespondersError:
            return await self._fail(request, *self._no_responders(request))
        except TimeoutError:
            return await self._fail(
                request,
                ErrorCode.TIMEOUT,
                f"no answer to {action!r} within its ttl of {timeout:g} s",
                {"ttl": timeout},
            )
        try:
            return decode(answer.data)
        except DecodeError:
            log.error("unreadable answer to %s (call %s)", action, request.correlation_id)
            return await self._fail(request, ErrorCode.INTERNAL, "the module's answer could not be read", {})

    def _no_responders(self, request: MCPMessage) -> tuple[ErrorCode, str, dict[str, str]]:
        action = request.action
        if request.target_module_id:
            return (
                ErrorCode.MODULE_NOT_FOUND,
                f"no instance of module {request.target_module_id!r} serves {action!r}",
                {"module_id": request.target_module_id, "capability": action},
            )
        if self._is_registered is not None and not self._is_registered(action):
            return ErrorCode.CAPABILITY_NOT_FOUND, f"no module offers {action!r}", {"capability": action}
        return (
            ErrorCode.CAPABILITY_UNAVAILABLE,
            f"no module serving {action!r} is running",
            {"capability": action},
        )

    async def _fail(
        self, request: MCPMessage, code: ErrorCode, text: str, details: dict[str, object]
    ) -> MCPMessage:
        """Answer with an error of the router's own and record it like a module's answer.

        It carries the request's size, as a module's answer does, so the failed call is
        metered the same from the answer or from its record."""
        error = error_reply(request, code, text, source_module_id=self._source_id, details=details)
        error.headers[BYTES_IN_HEADER] = str(len(request.payload))
        await self._nc.publish(
            subjects.record_response(request.context.tenant_id, request.action), error.SerializeToString()
        )
        return error
