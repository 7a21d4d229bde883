"""The HTTP edge: an aiohttp application whose NATS connection, Postgres pool and in-memory
indexes are opened and closed by ``cleanup_ctx``, and the runner that serves it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import asyncpg
import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from democratic_ai.contracts import ErrorCode, bus
from democratic_ai.hub import PresenceIndex, RegistryIndex, Router
from democratic_ai.schemas import UnsafeRole, check_app_role, create_pool
from democratic_ai.services.billing import (
    BillingLog,
    BillingService,
    Payments,
    PostgresUsageTotals,
    StripeBilling,
    UsageTotals,
)
from democratic_ai.services.identity import IdentityIndex, IdentityService, KeyRing, UserKeyStore, load_kek
from democratic_ai.services.metering import GATEWAY, Metering
from democratic_ai.services.plans import load_plans

from .auth import auth_middleware, require
from .billing_routes import add_billing_routes
from .bodies import respond
from .calls_routes import add_calls_routes
from .capabilities import invoke, list_capabilities
from .config import GatewayConfig
from .console_routes import add_console_routes
from .credential_watch import CredentialWatch
from .errors import error_middleware, error_response
from .gate import CallGate
from .hygiene import edge_headers
from .identity_routes import add_identity_routes
from .input_limits import InputLimits, effective_ceiling
from .inputs import input_middleware
from .mcp_http import add_mcp_routes
from .metrics import METRICS_PERMISSION, GatewayMetrics
from .module_routes import add_module_routes
from .openapi import add_openapi_route, operation
from .ops_routes import add_ops_routes
from .protocol import GatewayRunner
from .state import (
    BILLING,
    CONFIG,
    CREDENTIALS,
    GATE,
    IDENTITY,
    INPUT_LIMITS,
    KEY_RING,
    METERING,
    METRICS,
    NC,
    PAYMENTS,
    POOL,
    PRESENCE,
    REGISTRY,
    USER_KEYS,
    USERS,
)
from .toolset_routes import add_toolset_routes
from .usage_routes import add_usage_routes
from .websocket import websocket

__all__ = ["create_app", "create_runner", "runner_for"]

USAGE_TOTALS = web.AppKey("usage_totals", UsageTotals)  # set by create_app's caller to replace the read model
_USAGE_CATCH_UP_SECONDS = 5.0


async def _connections(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    kek = config.kek or load_kek()  # before connecting: a missing KEK is a clear error, not a hang
    nc = await bus.connect(config.bus, "dai-gateway", max_reconnect_attempts=-1)
    js = nc.jetstream()
    pool = await create_pool(config.database_url, max_size=8)
    try:
        async with pool.acquire() as conn:
            await check_app_role(conn)
    except UnsafeRole:
        await pool.close()
        await nc.close()
        raise
    registry, presence, identity, ring = RegistryIndex(), PresenceIndex(), IdentityIndex(), KeyRing(kek)
    user_keys = UserKeyStore(js, kek)
    await registry.start(js)
    await presence.start(nc)
    await identity.start(js)
    await ring.start(js)
    await user_keys.start()
    app[NC], app[POOL] = nc, pool
    app[REGISTRY], app[PRESENCE], app[IDENTITY], app[KEY_RING] = registry, presence, identity, ring
    ceiling = effective_ceiling(config.body_ceiling_bytes, nc.max_payload)
    app[INPUT_LIMITS] = InputLimits(default=min(config.max_body_bytes, ceiling), ceiling=ceiling, registry=registry)
    app[USER_KEYS] = user_keys
    app[CREDENTIALS] = CredentialWatch(identity)
    app[USERS] = IdentityService(js, identity, ring, user_keys)
    metering = Metering(nc, config.metering)
    await metering.start()
    app[METERING] = metering
    router = Router(nc, source_id=GATEWAY, is_registered=registry.is_registered, presence=presence)
    app[METRICS] = GatewayMetrics(
        registry.is_registered,
        lambda: {"identity": identity.last_sequence, "registry": registry.last_sequence},
        lambda: nc.stats["reconnects"],
    )
    app[GATE] = CallGate(nc, identity, ring, metering, router, app[INPUT_LIMITS], app[METRICS])
    stripe = StripeBilling(config.billing.stripe) if config.billing.stripe else None
    # A request waits a few seconds for the usage fold, then answers 503 NOT_READY: a client can
    # retry; a request held for a minute (a projection worker that is down) helps nobody.
    usage = app.get(USAGE_TOTALS) or PostgresUsageTotals(pool, js, catch_up_timeout=_USAGE_CATCH_UP_SECONDS)
    app[BILLING] = BillingService(js, load_plans(), usage, config.billing)
    app[PAYMENTS] = Payments(BillingLog(js), stripe)
    yield
    if stripe is not None:
        await stripe.close()
    await metering.stop()  # flushes buffered usage while NATS is still connected
    await user_keys.stop()
    await ring.stop()
    app[CREDENTIALS].close()
    await identity.stop()
    await presence.stop()
    await registry.stop()
    await nc.drain()
    await pool.close()


class Status(msgspec.Struct, omit_defaults=True):
    status: Literal["ok", "ready"]
    warnings: list[str] = []  # e.g. this process's clock is far from the NATS server's
    clock_skew_seconds: float | None = None


@operation("Liveness: the process answers.", {200: Status}, public=True)
async def healthz(request: web.Request) -> web.Response:
    return respond(Status("ok"))


@operation(
    "Readiness: NATS connected and Postgres answering (503 NOT_READY, naming what fails, otherwise).",
    {200: Status},
    public=True,
)
async def readyz(request: web.Request) -> web.Response:
    """Ready when NATS is connected and Postgres answers. A clock far from the NATS server's
    is named under ``warnings`` but does not make the gateway unready: limits and deadlines are
    measured on the server's clock and the monotonic one (:mod:`democratic_ai.contracts.server_clock`)."""
    problems = []
    if not request.app[NC].is_connected:
        problems.append("nats")
    try:
        async with request.app[POOL].acquire(timeout=2.0) as conn:
            await conn.fetchval("SELECT 1")
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        problems.append(f"postgres: {exc}")
    if problems:
        return error_response(ErrorCode.NOT_READY, "not ready", {"failing": problems}, status=503)
    clock = request.app[METERING].clock
    problem = clock.check()
    if problem is not None:
        return respond(Status("ready", warnings=[problem], clock_skew_seconds=round(clock.skew() or 0.0, 3)))
    return respond(Status("ready"))


@operation(
    "Prometheus metrics of this gateway (text exposition format); needs metrics:read.",
    {200: None},
    other_content={"text/plain": {"type": "string", "description": "Prometheus text format 0.0.4."}},
    description="Calls by capability, transport and outcome, their latency, refusals by policy, follower"
    " positions, NATS reconnects (services/gateway/metrics.py).",
)
async def metrics(request: web.Request) -> web.Response:
    require(request, METRICS_PERMISSION)
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(config: GatewayConfig, *, usage: UsageTotals | None = None) -> web.Application:
    """The gateway; ``usage`` replaces the usage read model that invoices are computed from."""
    app = web.Application(
        middlewares=[error_middleware, input_middleware, auth_middleware], client_max_size=config.max_body_bytes
    )
    app[CONFIG] = config
    app.on_response_prepare.append(edge_headers)
    if usage is not None:
        app[USAGE_TOTALS] = usage
    app.cleanup_ctx.append(_connections)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/capabilities", list_capabilities)
    app.router.add_post("/v1/capabilities/{capability}/invoke", invoke)
    add_identity_routes(app)
    add_module_routes(app)
    add_toolset_routes(app)
    add_billing_routes(app)
    app.router.add_get("/v1/ws", websocket)
    add_usage_routes(app)
    add_calls_routes(app)
    add_ops_routes(app)
    add_mcp_routes(app)
    add_console_routes(app)
    add_openapi_route(app)
    return app


def create_runner(config: GatewayConfig, **kwargs: Any) -> web.AppRunner:
    """The runner to serve the gateway with (see :func:`runner_for`)."""
    return runner_for(create_app(config), **kwargs)


def runner_for(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """The runner to serve ``app`` with: a client that hangs up cancels its handler, and a
    request aiohttp cannot parse is answered in the edge's error shape (:mod:`.protocol`).

    ``handler_cancellation`` is what turns a closed SSE connection into a CANCEL at the module
    at once, instead of at the next chunk the gateway fails to write.
    """
    return GatewayRunner(app, handler_cancellation=True, **kwargs)
