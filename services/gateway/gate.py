"""The call gate: the one way a call enters the platform, whatever the transport.

    authenticate → authorize → admit → route → record → meter → answer

Every transport — the JSON invoke, its Server-Sent Events form, the WebSocket, and any later
one — turns its own framing into a credential, a capability, a payload and options, and hands
them to :class:`CallGate`; what comes back is the call's answer (or its stream of answers) as
MCP messages, which the transport frames again. Nothing else in the gateway admits, routes or
meters a call, so the rules cannot drift between transports:

- a call is admitted by the rate limits before it is routed; a refused one raises
  :class:`Refused`, whose RATE_LIMITED answer is recorded in the MCP log and metered like any
  call's end (``rate_limited``, not billable);
- the router records the request and its answers in the MCP log, and every call is metered once,
  from the message that ended it, with one outcome for all of its metrics
  (:func:`democratic_ai.contracts.call_usage.outcome_of`): ``success``, ``cancelled`` by the
  caller, ``timeout``, ``failed``, ``rate_limited``.

Errors are :class:`~democratic_ai.contracts.PlatformError` with a stable code (the transport
maps the code to its own status: HTTP through :data:`.errors.STATUS`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from nats.aio.client import Client as NATS

from democratic_ai.contracts import ErrorCode, MCPMessage, error_details, error_reply, new_request, subjects, tracing
from democratic_ai.contracts.headers import MCP_TRANSPORT
from democratic_ai.hub import CallStream, Router
from democratic_ai.services.identity import IdentityIndex, KeyRing, Principal, Unauthenticated, authenticate
from democratic_ai.services.metering import GATEWAY, AdmissionUnavailable, Decision, Metering, PolicyState

from .errors import ApiError
from .input_limits import InputLimits
from .metrics import GatewayMetrics
from .ratelimit_headers import retry_after_header

__all__ = ["CALL_PERMISSION", "CallGate", "Refused"]

CALL_PERMISSION = "module:use"  # what a principal needs to call a capability
OnEnd = Callable[[MCPMessage], None]  # told the message that ended a call


class Refused(ApiError):
    """A call the rate limits refused. ``answer`` is its RATE_LIMITED answer — already recorded
    and metered; its details name the refusing ``policy`` and the whole seconds to wait
    (``retry_after``) — and ``decision`` the limiter's verdict, for a transport's headers."""

    def __init__(self, answer: MCPMessage, decision: Decision) -> None:
        super().__init__(ErrorCode.RATE_LIMITED, decision.message, error_details(answer))
        self.answer = answer
        self.decision = decision


class CallGate:
    """Authenticates, authorizes, admits, routes, records and meters every call of this gateway.

    One per gateway process, built once its NATS connection and indexes are up. It holds no
    per-call state: a transport may call it from any number of tasks at once.
    """

    def __init__(
        self,
        nc: NATS,
        identity: IdentityIndex,
        key_ring: KeyRing,
        metering: Metering,
        router: Router,
        input_limits: InputLimits,
        metrics: GatewayMetrics,
    ) -> None:
        self._nc = nc
        self._identity = identity
        self._key_ring = key_ring
        self._metering = metering
        self._router = router
        self._limits = input_limits
        self._metrics = metrics

    def authenticate(self, credential: str) -> Principal:
        """The principal of an API key or access token; UNAUTHENTICATED, saying why, otherwise."""
        try:
            return authenticate(self._identity, self._key_ring, credential)
        except Unauthenticated as exc:
            raise ApiError(ErrorCode.UNAUTHENTICATED, exc.message) from None

    @staticmethod
    def authorize(principal: Principal, capability: str) -> None:
        """FORBIDDEN unless ``principal`` may call ``capability``: it holds the permission to call,
        and its key's toolset (:mod:`democratic_ai.contracts.toolsets`) allows the capability. A
        transport may check it before it reads a call's input; :meth:`request` checks it anyway."""
        if not principal.can(CALL_PERMISSION):
            raise ApiError(
                ErrorCode.FORBIDDEN, f"this needs the permission {CALL_PERMISSION}", {"needed": [CALL_PERMISSION]}
            )
        if not principal.may_call(capability):
            raise ApiError(
                ErrorCode.FORBIDDEN,
                f"this API key may not call {capability!r}: it is not in its toolset",
                {"capability": capability, "toolset": list(principal.toolset)},
            )

    @staticmethod
    def may_call(principal: Principal, capability: str) -> bool:
        """Whether :meth:`authorize` lets ``principal`` call ``capability`` (for listing them)."""
        return principal.can(CALL_PERMISSION) and principal.may_call(capability)

    def request(
        self,
        principal: Principal,
        capability: str,
        payload: bytes,
        *,
        module: str = "",
        priority: int = 5,
        ttl: int = 30,
    ) -> MCPMessage:
        """The MCP request of ``principal`` calling ``capability`` (on ``module``, when given) with
        ``payload``: BAD_REQUEST for an invalid name, FORBIDDEN unless it may call it (:meth:`authorize`),
        PAYLOAD_TOO_LARGE for an input over the capability's limit (:mod:`.input_limits`)."""
        action, target = checked_capability(capability), checked_module(module)
        self.authorize(principal, action)
        self._limits.check(action, len(payload), self._limits.of(action, target))
        return new_request(
            action,
            payload,
            tenant_id=principal.tenant_id,
            source_module_id=GATEWAY,
            target_module_id=target,
            user_id=principal.user_id,
            api_key_id=principal.key_id,
            priority=priority,
            ttl=ttl,
        )

    async def call(self, principal: Principal, request: MCPMessage, *, transport: str = "http") -> MCPMessage:
        """Admit, route and meter ``request``; its answer: the RESPONSE or an ERROR (the module's,
        or the platform's: no module, timeout, cancelled). Raises :class:`Refused` when the limits
        refuse it, NOT_READY while this gateway cannot decide yet. ``transport`` names the way in,
        for the metrics."""
        with _span("invoke", request):
            on_end = await self._admit(principal, request, transport)
            # Metered from the message that ended the call — also when the caller hangs up
            # meanwhile (then the router's CANCELLED).
            return await self._router.call(request, on_end=on_end)

    async def stream(self, principal: Principal, request: MCPMessage, *, transport: str = "sse") -> CallStream:
        """Admit ``request`` and open it as a streamed call, metered from the message that ends it,
        whichever way it ends. The caller must ``close()`` the stream; closing it before its end
        cancels the call at the module. Raises as :meth:`call` does."""
        with _span("stream", request):
            on_end = await self._admit(principal, request, transport)
            if tracing.tracing_enabled():  # it ends later, in the task that reads it: meter it in this span
                on_end = tracing.in_context_of_now(on_end)
            return await self._router.open_stream(request, on_end=on_end)

    def policies(self, principal: Principal) -> list[PolicyState]:
        """The state of every rate-limit policy of ``principal`` (for a transport's headers)."""
        return self._metering.policies(principal)

    async def _admit(self, principal: Principal, request: MCPMessage, transport: str) -> OnEnd:
        """Admit ``request``; what to tell the message that ends it (meter it, count it)."""
        request.headers[MCP_TRANSPORT] = transport  # recorded with the request: the calls read model shows it
        try:
            decision = await self._metering.admit(principal, len(request.payload))
        except AdmissionUnavailable as exc:
            raise ApiError(ErrorCode.NOT_READY, exc.message) from None
        if not decision.allowed:
            answer = await self._refusal(request, decision)
            self._metrics.refused(answer, transport, decision.refused_by)
            raise Refused(answer, decision)
        metering, metrics = self._metering, self._metrics
        started = metrics.started(transport)

        def ended(answer: MCPMessage) -> None:
            metrics.ended(answer, metering.record(answer), transport, started)

        return ended

    async def _refusal(self, request: MCPMessage, decision: Decision) -> MCPMessage:
        """The RATE_LIMITED answer to a refused call, recorded and metered like any call's end."""
        details = {"policy": decision.refused_by, "retry_after": int(retry_after_header(decision.retry_after))}
        answer = error_reply(
            request, ErrorCode.RATE_LIMITED, decision.message, source_module_id=GATEWAY, details=details
        )
        answer.headers[MCP_TRANSPORT] = request.headers[MCP_TRANSPORT]  # a refused call has no request record
        record = subjects.record_response(request.context.tenant_id, request.action)
        await self._nc.publish(record, answer.SerializeToString())
        self._metering.record(answer)
        return answer


def _span(kind: str, request: MCPMessage) -> AbstractContextManager[object]:
    """The gateway's span of a call when tracing is on (its call id an attribute, to find a call's
    trace by the ``X-Call-Id`` its caller got); nothing otherwise."""
    if tracing.tracing_enabled():
        return tracing.tracer.start_as_current_span(
            f"gateway {kind} {request.action}", attributes={"dai.call_id": request.correlation_id}
        )
    return nullcontext()


def checked_capability(capability: str) -> str:
    """``capability`` if it is a valid name, else a BAD_REQUEST."""
    try:
        return subjects.validate_capability(capability)
    except subjects.InvalidSubjectToken as exc:
        raise ApiError(ErrorCode.BAD_REQUEST, str(exc), {"capability": capability}) from None


def checked_module(module: str) -> str:
    """An empty name (route by capability) or a valid module id, else a BAD_REQUEST."""
    if module:
        try:
            subjects.validate_token(module, "module")
        except subjects.InvalidSubjectToken as exc:
            raise ApiError(ErrorCode.BAD_REQUEST, str(exc), {"parameter": "module"}) from None
    return module
