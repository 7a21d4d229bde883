"""PostgreSQL killed with kill -9 under load and started again: the same `dai projections run usage`
process waits, resumes from its checkpoint, and the usage totals equal the successful calls."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import psutil
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS

from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import free_port
from democratic_ai.ops.postgres_server import PostgresServer
from democratic_ai.ops.services import RECOVERY_GRACE_ENV
from democratic_ai.schemas import app_dsn, create_pool, migrate
from democratic_ai.services.gateway import GatewayConfig, create_app
from democratic_ai.services.gateway.app import runner_for
from democratic_ai.services.identity import KeyEncryptionKey
from democratic_ai.services.metering import MeteringConfig, load_plans

from support.gateway import TEST_METERING, Gateway, issue_key
from support.modules import Echo
from support.names import unique
from support.usage import forget_usage
from support.waiting import eventually

CONCURRENCY = 16
OUTAGE_SECONDS = 2.0


def kill_9(server: PostgresServer) -> None:
    """SIGKILL the postmaster and every backend, as the OOM killer or a power cut would."""
    postmaster = psutil.Process(int((server.pgdata / "postmaster.pid").read_text().split("\n", 1)[0]))
    processes = [postmaster, *postmaster.children(recursive=True)]
    for process in processes:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=10)


def restart(server: PostgresServer) -> None:
    """Start the killed server again on the same data directory (and so the same socket): crash recovery."""
    server.stop()  # no postmaster left: only forgets the dead one
    server.start()


async def _fetchval(url: str, query: str, *args: object) -> object:
    """One query on a connection of its own: the test's view must not depend on a pool that
    lived through the outage."""
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


@pytest.fixture
async def gateway(
    nats_server: NatsServer, database_url: str, pool: asyncpg.Pool, nc: NATS, kek: KeyEncryptionKey
) -> AsyncIterator[Gateway]:
    """An in-process gateway with a tenant of its own on the unlimited plan.

    Not conftest's ``start_gateway``: that one runs the projections in-process, and their usage
    runner would take the consumer ``projection-usage`` from the worker under test.
    """
    tenant = unique("outage")
    plans = load_plans()
    plans.assign(tenant, "unlimited")
    key = await issue_key(nc, tenant)
    port = free_port()
    config = GatewayConfig(
        bus=nats_server.bus("gateway"),
        database_url=app_dsn(database_url),
        port=port,
        metering=MeteringConfig(plans=plans, publisher=TEST_METERING.publisher),
        kek=kek,
    )
    app = create_app(config)
    runner = runner_for(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield Gateway(url=f"http://127.0.0.1:{port}", api_key=key, tenant=tenant, app=app)
    await runner.cleanup()


@pytest.mark.slow
async def test_usage_totals_are_exact_after_postgres_is_killed_under_load_and_restarted(
    gateway: Gateway, echo: Echo, nc: NATS, nats_server: NatsServer, tmp_path: Path
) -> None:
    tenant = gateway.tenant
    server = PostgresServer(tmp_path / "own-pg")  # this test's own server: it is killed
    server.start()
    url = server.ensure_database("usage_outage")
    pool = await create_pool(url, max_size=1)
    async with pool.acquire() as conn:
        await migrate(conn)  # as the worker would: the test reads the tables from the start
    await pool.close()
    log_path = tmp_path / "projections.log"
    env = {
        **os.environ,
        **nats_server.environment("projections"),
        "DATABASE_URL": url,
        "DAI_LOG_LEVEL": "WARNING",
        RECOVERY_GRACE_ENV: "1",
    }  # the recovery sweep runs (and meets the outage) during the test
    command = [sys.executable, "-m", "democratic_ai.ops.cli", "projections", "run", "usage"]
    statuses: Counter[int] = Counter()
    done = asyncio.Event()

    async def load(session: aiohttp.ClientSession) -> None:
        invoke = f"{gateway.url}/v1/capabilities/test.echo/invoke"
        while not done.is_set():
            async with session.post(invoke, json={"text": "x"}, headers={"X-API-Key": gateway.api_key}) as response:
                await response.read()
                statuses[response.status] += 1

    async def folded(minimum: int) -> bool:
        count = await _fetchval(
            url, "SELECT count(*) FROM usage_events WHERE tenant_id = $1 AND metric = 'api_calls'", tenant
        )
        return count >= minimum

    with log_path.open("wb") as log_file:
        worker = subprocess.Popen(command, env=env, stderr=log_file)
    callers: list[asyncio.Task[None]] = []
    try:
        async with asyncio.timeout(180), aiohttp.ClientSession() as session:
            callers += [asyncio.create_task(load(session)) for _ in range(CONCURRENCY)]
            await eventually(
                lambda: folded(1), "the worker to fold some of the tenant's calls", timeout=60, interval=0.05
            )
            kill_9(server)
            calls_at_kill = sum(statuses.values())
            await asyncio.sleep(OUTAGE_SECONDS)  # the calls go on; their usage waits in the stream
            calls_in_outage = sum(statuses.values()) - calls_at_kill
            restart(server)
            restarted = asyncio.get_running_loop().time()
            await asyncio.sleep(1.0)  # the calls go on for a second after the restart
            done.set()
            await asyncio.gather(*callers)
            assert worker.poll() is None, "dai projections run exited"
            assert await gateway.metering.publisher.flush(timeout=30)
            target = (await nc.jetstream().stream_info("USAGE")).state.last_seq

            async def caught_up() -> bool:
                return (
                    # One worker advances every partition's checkpoint with each batch.
                    await _fetchval(
                        url, "SELECT min(last_sequence) FROM projection_checkpoints WHERE name LIKE 'usage.p%'"
                    )
                    or 0
                ) >= target

            await eventually(caught_up, "the worker to catch up after the restart", timeout=60, interval=0.05)
            resumed_in = asyncio.get_running_loop().time() - restarted
            assert worker.poll() is None, "the same worker process resumed, nobody restarted it"
            pool = await create_pool(url, max_size=1)
            try:
                async with pool.acquire() as conn:
                    rows = await conn.fetch(
                        "SELECT metric, outcome, sum(value)::bigint AS value FROM usage_daily"
                        " WHERE tenant_id = $1 GROUP BY 1, 2",
                        tenant,
                    )
                    raw = await conn.fetchval(
                        "SELECT count(*) FROM usage_events WHERE tenant_id = $1 AND metric = 'api_calls'", tenant
                    )
            finally:
                await pool.close()
    finally:
        done.set()
        for caller in callers:
            caller.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        finally:
            server.stop()
    print(
        f"\n{statuses[200]} calls, {calls_at_kill} before the kill, {calls_in_outage} while PostgreSQL was down;"
        f" caught up {resumed_in:.1f} s after the restart"
    )
    assert calls_in_outage > 0, "no calls were made while the database was down"
    # The worker recreates its consumer at the checkpoint: it does not wait for JetStream to
    # redeliver (ack_wait is 60 s) what it had fetched when the database went.
    assert resumed_in < 50, f"caught up {resumed_in:.1f} s after the restart"
    assert set(statuses) == {200}
    totals = {(r["metric"], r["outcome"]): r["value"] for r in rows}
    assert totals[("api_calls", "success")] == statuses[200] == raw
    log = log_path.read_text(errors="replace")
    assert log.count("projection usage: the database is unreachable") == 1, log[-3000:]
    assert "projection usage: the database is reachable again" in log, log[-3000:]
    await forget_usage(nc, tenant)
