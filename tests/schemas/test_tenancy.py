"""The one tenant-scoped transaction of every read-model query: through it the app role sees its
tenant's rows and no other's, the scope ends with the block, and a bad argument is refused."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import asyncpg
import pytest

from democratic_ai.schemas import app_dsn, platform_transaction, tenant_transaction


def _tenant() -> str:
    return f"tenancy-{uuid.uuid4().hex[:10]}"


async def _seed(pool: asyncpg.Pool, *tenants: str) -> None:
    """As the owner: a usage_daily row and a tenants row for each tenant."""
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        for tenant in tenants:
            await conn.execute(
                "INSERT INTO usage_daily (tenant_id, day, metric, outcome, value, events)"
                " VALUES ($1, $2, 'api_calls', 'success', 7, 7)",
                tenant,
                date(2025, 1, 1),
            )
            await conn.execute(
                "INSERT INTO tenants (tenant_id, name, created_at, updated_at) VALUES ($1, $1, $2, $2)", tenant, now
            )


async def test_the_app_role_sees_only_the_named_tenants_rows(pool: asyncpg.Pool, database_url: str) -> None:
    mine, other = _tenant(), _tenant()
    await _seed(pool, mine, other)
    app = await asyncpg.create_pool(app_dsn(database_url), min_size=1, max_size=1)
    try:
        async with tenant_transaction(app, mine) as conn:
            assert {r["tenant_id"] for r in await conn.fetch("SELECT tenant_id FROM usage_daily")} == {mine}
            assert {r["tenant_id"] for r in await conn.fetch("SELECT tenant_id FROM tenants")} == {mine}
            assert await conn.fetchval("SELECT count(*) FROM usage_daily WHERE tenant_id = $1", other) == 0
        async with app.acquire() as conn:  # the same (only) connection: the scope ended with the block
            assert await conn.fetchval("SELECT count(*) FROM usage_daily") == 0
            async with tenant_transaction(conn, other):  # a connection works as a pool does
                assert {r["tenant_id"] for r in await conn.fetch("SELECT tenant_id FROM usage_daily")} == {other}
            assert await conn.fetchval("SELECT current_setting('dai.tenant_id', true)") in ("", None)
        async with platform_transaction(app) as conn:  # tenants is listed platform-wide; usage is not
            assert {mine, other} <= {r["tenant_id"] for r in await conn.fetch("SELECT tenant_id FROM tenants")}
            assert await conn.fetchval("SELECT count(*) FROM usage_daily") == 0
    finally:
        await app.close()


@pytest.mark.parametrize("tenant_id", [None, "", 42, b"acme", "ac\x00me"])
async def test_a_transaction_without_a_tenant_is_refused(pool: asyncpg.Pool, tenant_id: object) -> None:
    with pytest.raises(ValueError, match="tenant id"):
        async with tenant_transaction(pool, tenant_id):  # type: ignore[arg-type]
            pytest.fail("the block ran without a tenant")


async def test_a_scope_that_would_outlive_its_block_is_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(ValueError, match="in a transaction already"):
            async with tenant_transaction(conn, _tenant()):
                pytest.fail("the block ran inside an outer transaction")
    with pytest.raises(TypeError, match="pool or a connection"):
        async with tenant_transaction("postgresql://nowhere", _tenant()):  # type: ignore[arg-type]
            pytest.fail("the block ran without a database")


async def test_a_platform_transaction_reads_a_modules_calls_of_every_tenant_by_its_index(
    pool: asyncpg.Pool, database_url: str
) -> None:
    """What GET /v1/modules/{module}/stats reads (migration 017): every tenant's calls to the module."""
    mine, other, module = _tenant(), _tenant(), f"module-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        for tenant in (mine, other):
            await conn.execute(
                "INSERT INTO calls (tenant_id, call_id, capability, module_id, at, ended_at, outcome)"
                " VALUES ($1, $2, 'test.stats', $3, $4, $4, 'success')",
                tenant,
                uuid.uuid4().hex,
                module,
                now,
            )
    app = await asyncpg.create_pool(app_dsn(database_url), min_size=1, max_size=1)
    window = "SELECT tenant_id FROM calls WHERE module_id = $1 AND ended_at IS NOT NULL AND ended_at >= $2"
    try:
        async with tenant_transaction(app, mine) as conn:
            assert [r["tenant_id"] for r in await conn.fetch(window, module, now)] == [mine]
        async with platform_transaction(app) as conn:
            assert sorted(r["tenant_id"] for r in await conn.fetch(window, module, now)) == sorted([mine, other])
            await conn.execute("SET LOCAL enable_seqscan = off")  # two rows: else a scan is as cheap
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {window}", module, now))
            assert "calls_by_module" in plan, plan
    finally:
        await app.close()
