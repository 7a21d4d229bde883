"""The processes of the platform, one function each: hub, gateway, projections; and the one-shot
commands (key rotation, adding a super admin, closing billing periods). A module runs by
:mod:`.module_run`."""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import socket
from datetime import UTC, datetime

import asyncpg
from aiohttp import web

from democratic_ai.contracts import tracing
from democratic_ai.contracts.bus import BusOptions, connect
from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.identity_events import UserRegistered
from democratic_ai.contracts.server_clock import ServerClock
from democratic_ai.contracts.streams import MCP_STREAM, REGISTRY_STREAM, STREAMS, ensure_streams
from democratic_ai.hub import Hub
from democratic_ai.hub.metrics import HubMetrics
from democratic_ai.projections import (
    PROJECTIONS,
    Checkpoints,
    ProjectionRunner,
    RecoveryConfig,
    Share,
    UsageRecovery,
)
from democratic_ai.projections.admin import ProjectionsAdmin
from democratic_ai.projections.metrics import ProjectionMetrics
from democratic_ai.schemas import DatabaseOutage, DatabaseUnreachable, create_pool, migrate, on_database
from democratic_ai.sdk import Module
from democratic_ai.services.billing import (
    BillingConfig,
    BillingError,
    BillingLog,
    BillingService,
    Payments,
    PostgresUsageTotals,
    StripeBilling,
    format_money,
)
from democratic_ai.services.busauth import BusAuthorizer, Signer
from democratic_ai.services.gateway import GatewayConfig, create_runner
from democratic_ai.services.identity import (
    CannotUnseal,
    IdentityError,
    IdentityIndex,
    IdentityService,
    KeyEncryptionKey,
    KeyRing,
    UserKeyStore,
    check_kek,
    load_kek,
    rotate_signing_key,
    signing_key_bucket,
    user_key_bucket,
)
from democratic_ai.services.plans import load_plans

from .metrics_endpoint import MetricsAddress, serve_metrics

__all__ = [
    "add_super_admin",
    "close_billing_periods",
    "ensure_platform_streams",
    "env_seconds",
    "load_module_class",
    "projection_share",
    "rotate_jwt_key",
    "run_busauth",
    "run_gateway",
    "run_hub",
    "run_projections",
]

log = logging.getLogger(__name__)

PROJECTION_WORKERS_ENV = "DAI_PROJECTION_WORKERS"  # how many workers split the partitioned projections
PROJECTION_WORKER_ENV = "DAI_PROJECTION_WORKER"  # which of them this one is, from 0
RECOVERY_GRACE_ENV = "DAI_USAGE_RECOVERY_GRACE"  # seconds an answer must age before recovery checks it


def env_seconds(name: str, default: float) -> float:
    """A number of seconds from the environment variable ``name`` (``default`` when unset)."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"dai: {name} must be a number of seconds, not {raw!r}") from None
    if value < 0:
        raise SystemExit(f"dai: {name} must not be negative")
    return value


async def run_busauth(auth: BusOptions, system: BusOptions, issuer_seed: str, stop: asyncio.Event) -> None:
    """The auth callout: admit modules with their own credentials, disconnect revoked ones."""
    auth_nc = await connect(auth, "dai-busauth", max_reconnect_attempts=-1)
    sys_nc = await connect(system, "dai-busauth-sys", max_reconnect_attempts=-1)
    authorizer = BusAuthorizer(Signer(issuer_seed), IdentityIndex())
    await authorizer.start(auth_nc, sys_nc)
    log.info("bus authorization ready")
    await stop.wait()
    await authorizer.stop()
    await sys_nc.drain()
    await auth_nc.drain()


async def run_hub(options: BusOptions, stop: asyncio.Event, metrics: MetricsAddress | None = None) -> None:
    """Run the hub until ``stop``; serve its metrics at ``metrics`` if given."""
    tracing.configure_tracing("dai-hub")
    nc = await connect(options, "dai-hub", max_reconnect_attempts=-1)
    await ServerClock().refresh(nc, REGISTRY_STREAM)  # warns if this host's clock is far from the server's
    hub = Hub()
    await hub.start(nc)
    endpoint = None
    try:
        if metrics is not None:
            collected = HubMetrics(hub, lambda: nc.stats["reconnects"])
            endpoint = await serve_metrics(metrics, collected.render, "hub metrics")
            log.info("hub metrics at http://%s:%d/metrics", metrics.host, metrics.port)
        log.info("hub ready")
        await stop.wait()
    finally:
        if endpoint is not None:
            await endpoint.cleanup()
        await hub.stop()
        await nc.drain()


async def run_gateway(config: GatewayConfig, stop: asyncio.Event) -> None:
    tracing.configure_tracing("dai-gateway")
    runner = create_runner(config, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    log.info("gateway listening on http://%s:%d", config.host, config.port)
    await stop.wait()
    await runner.cleanup()


def projection_share(workers: int | None, worker: int | None) -> Share:
    """This worker's share of the partitioned projections: the options, else the environment
    (``DAI_PROJECTION_WORKERS``, ``DAI_PROJECTION_WORKER``: a StatefulSet sets the latter from
    its pod index), else one worker that folds every partition."""
    count = workers if workers is not None else _env_int(PROJECTION_WORKERS_ENV, 1)
    index = worker if worker is not None else _env_int(PROJECTION_WORKER_ENV, 0)
    try:
        return Share(count, index)
    except ValueError as exc:
        raise SystemExit(f"dai: {exc}") from None


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"dai: {name} must be a whole number, not {raw!r}") from None


async def run_projections(
    options: BusOptions,
    database_url: str,
    names: list[str],
    stop: asyncio.Event,
    metrics: MetricsAddress | None = None,
    share: Share | None = None,
) -> None:
    """Fold ``names`` (default: every projection) until ``stop``; serve their metrics at ``metrics`` if given.

    With a ``share`` of several workers, only partitioned projections may be named, and this
    worker folds its share of their partitions (see projections/checkpoints.py)."""
    share = share or Share()
    unknown = sorted(set(names) - set(PROJECTIONS))
    if unknown:
        raise SystemExit(f"dai: unknown projection(s) {', '.join(unknown)}; known: {', '.join(sorted(PROJECTIONS))}")
    tracing.configure_tracing("dai-projections")
    partitioned = sorted(name for name, p in PROJECTIONS.items() if p.partitions is not None)
    if share.workers > 1 and (not names or set(names) - set(partitioned)):
        raise SystemExit(
            f"dai: only partitioned projections ({', '.join(partitioned)}) run as several workers;"
            f" name them: dai projections run {' '.join(partitioned)} --workers {share.workers} --worker {share.worker}"
        )
    for name in names:
        try:
            Checkpoints(PROJECTIONS[name], share)
        except ValueError as exc:
            raise SystemExit(f"dai: {exc}") from None
    nc = await connect(options, "dai-projections", max_reconnect_attempts=-1)
    await ServerClock().refresh(nc, MCP_STREAM)  # warns if this host's clock is far from the server's
    # min_size=0: the pool connects on demand. With a floor, asyncpg itself would reconnect in
    # the background during an outage and log a traceback per attempt; the runners wait for
    # the database and say so once (then every 30 s).
    pool = await create_pool(database_url, min_size=0, max_size=max(2, len(names) + 1))
    await _migrate_when_reachable(pool, stop)
    runners = [
        ProjectionRunner(nc.jetstream(), pool, PROJECTIONS[name], share=share) for name in names or sorted(PROJECTIONS)
    ]
    running = ", ".join(r.projection.name for r in runners)
    if share.workers > 1:
        partitions = " ".join(map(str, runners[0].checkpoints.partitions))
        running += f" (worker {share.worker} of {share.workers}: partitions {partitions})"
    log.info("projections running: %s", running)
    # Every worker answers for every projection (a retry takes the projection's checkpoint lock,
    # whichever process folds it): the console's Operations page asks whichever answers first.
    admin = ProjectionsAdmin(nc, pool, PROJECTIONS.values())
    await admin.start()
    tasks = [runner.run(stop) for runner in runners]
    recovery = None
    if any(r.projection.name == "usage" for r in runners) and share.worker == 0:
        # Recovery re-derives usage that crashed gateways never published; it checks the usage
        # read model, so it runs next to the projection that keeps it — beside its first
        # worker only, as one sweep covers every tenant.
        config = RecoveryConfig(grace=env_seconds(RECOVERY_GRACE_ENV, RecoveryConfig().grace))
        recovery = UsageRecovery(nc.jetstream(), pool, config)
        tasks.append(recovery.run(stop))
    endpoint = None
    try:
        if metrics is not None:
            collected = ProjectionMetrics(nc.jetstream(), pool, runners, recovery, lambda: nc.stats["reconnects"])
            endpoint = await serve_metrics(metrics, collected.render, "projections metrics")
            log.info("projections metrics at http://%s:%d/metrics", metrics.host, metrics.port)
        await asyncio.gather(*tasks)
    finally:
        if endpoint is not None:
            await endpoint.cleanup()
        await admin.stop()
        await pool.close()
        await nc.drain()


async def _migrate_when_reachable(pool: asyncpg.Pool, stop: asyncio.Event) -> None:
    """Migrate, waiting for the database first if it cannot be reached (it may be starting too)."""
    outage = DatabaseOutage("projections", log)
    while not stop.is_set():
        try:
            with on_database():
                async with pool.acquire() as conn:
                    await migrate(conn)
        except DatabaseUnreachable as exc:
            await outage.pause(exc, stop)
            continue
        outage.over()
        return


def load_module_class(spec: str) -> type[Module]:
    """Import ``module:Class`` (see :mod:`.module_run`) and check that it is a Module subclass."""
    from .module_run import ModuleRunError, load_module_class as load

    try:
        return load(spec)
    except ModuleRunError as exc:
        raise SystemExit(f"dai: {exc.message}") from None


async def rotate_jwt_key(options: BusOptions, kek: KeyEncryptionKey | None = None) -> str:
    """Add a JWT signing key sealed under ``kek`` (default: :func:`load_kek` from the environment)."""
    kek = kek or load_kek()
    nc = await connect(options, "dai-identity")
    try:
        return await rotate_signing_key(nc.jetstream(), kek)
    finally:
        await nc.drain()


def _operator_actor() -> str:
    """Who runs this command, for the audit trail: ``operator:<login>@<host>``."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container): the uid still says who
        login = f"uid {os.getuid()}"
    return f"operator:{login}@{socket.gethostname()}"[:128]


async def add_super_admin(options: BusOptions, kek: KeyEncryptionKey, email: str, password: str) -> UserRegistered:
    """Register a super admin in the ``system`` tenant, who signs in to the console with a password.

    The API never makes a super admin; the operator does, with the bus credential that may write
    the IDENTITY stream and the KEK that seals the password hash with the user's data key. The
    identity index is folded here from the log, as a gateway folds it, so the command sees the
    e-mails already taken. Raises SystemExit with a one-line ``dai:`` message when it is refused.
    """
    nc = await connect(options, "dai-identity")
    js = nc.jetstream()
    index, user_keys = IdentityIndex(), UserKeyStore(js, kek)
    try:
        try:
            await check_kek(js, kek)  # a password sealed under another KEK would never open
        except CannotUnseal as exc:
            raise SystemExit(
                f"dai: {exc}: is DAI_KEK_FILE (or DAI_KEK) the key-encryption key the gateways use?"
            ) from None
        await index.start(js)
        await user_keys.start()
        # The ring signs tokens; registering signs none, so it is never started (nor a key made).
        service = IdentityService(js, index, KeyRing(kek), user_keys)
        meta = Meta(at=datetime.now(UTC), actor=_operator_actor(), user_agent="dai identity add-super-admin")
        return await service.register_super_admin(meta, email, password)
    except IdentityError as exc:
        raise SystemExit(f"dai: {exc.message}") from None
    finally:
        await user_keys.stop()
        await index.stop()
        await nc.drain()


async def close_billing_periods(
    options: BusOptions, database_url: str, tenant: str | None, period: str | None
) -> list[str]:
    """Close months into invoices (and push them to Stripe when it is configured); one line per month."""
    config = BillingConfig.from_env()
    nc = await connect(options, "dai-billing")
    pool = await create_pool(database_url, max_size=2)
    stripe = StripeBilling(config.stripe) if config.stripe else None
    lines = []
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        js = nc.jetstream()
        service = BillingService(js, load_plans(), PostgresUsageTotals(pool, js), config)
        payments = Payments(BillingLog(js), stripe)
        try:
            closed = await service.close_due(tenant, period)
            for result in closed:
                invoice = result.invoice
                if invoice is None:
                    lines.append(f"{result.tenant_id} {result.period}: nothing to bill")
                    continue
                state = "issued" if result.created else "already issued"
                pushed = ""
                if payments.enabled:
                    pushed = await payments.push(Meta(at=datetime.now(UTC), actor="system"), invoice)
                lines.append(
                    f"{result.tenant_id} {result.period}: {state} {invoice.invoice_id}, total"
                    f" {format_money(invoice.total, invoice.currency)}" + (f", Stripe {pushed}" if pushed else "")
                )
        except BillingError as exc:
            raise SystemExit(f"dai: {exc.message}") from None
    finally:
        if stripe is not None:
            await stripe.close()
        await pool.close()
        await nc.drain()
    return lines


async def ensure_platform_streams(options: BusOptions, replicas: int | None) -> list[tuple[str, int]]:
    """Create or update every stream of the log and the identity service's key-value buckets
    (``dai streams ensure``); returns each stream's name and replicas as the server reports them."""
    nc = await connect(options, "dai-streams")
    try:
        js = nc.jetstream()
        await ensure_streams(js, replicas)
        shown = [(await js.stream_info(config.name)).config for config in STREAMS if config.name]
        for bucket in (await signing_key_bucket(js, replicas), await user_key_bucket(js, replicas)):
            shown.append((await bucket.status()).stream_info.config)
        return [(config.name or "", config.num_replicas or 1) for config in shown]
    finally:
        await nc.close()
