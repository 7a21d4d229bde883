"""Every call is metered — by outcome, from the module's own measurements — and the usage read
models answer ``GET /v1/usage`` for the caller's tenant only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.services.metering import MeteringConfig, Plan, PlanBook, QuotaExceeded
from democratic_ai.services.plans import BandwidthLimit, CallLimit, ComputeLimit, StorageLimit

from support.client import http
from support.gateway import TEST_METERING, Gateway, StartGateway, gateway_ready, issue_key
from support.identity import login, new_tenant, new_user
from support.modules import Echo
from support.names import unique
from support.projections import caught_up
from support.usage import settled, usage_events


async def invoke(
    gateway: Gateway, payload: dict, capability: str = "test.echo", key: str | None = None
) -> tuple[int, dict]:
    return await http(
        "POST",
        f"{gateway.url}/v1/capabilities/{capability}/invoke",
        json=payload,
        headers={"X-API-Key": key or gateway.api_key},
    )


async def test_calls_are_metered_by_outcome_with_the_modules_measurements(
    gateway: Gateway, echo: Echo, nc: NATS, pool: asyncpg.Pool
) -> None:
    ok = [await invoke(gateway, {"text": "x" * n}) for n in (1, 10, 100)]
    assert [status for status, _ in ok] == [200, 200, 200]
    status, _ = await invoke(gateway, {"text": "boom", "fail": True})
    assert status == 502
    status, _ = await invoke(gateway, {"text": "nobody"}, capability="test.nobody-serves-this")
    assert status == 404
    slow_status, _ = await invoke(gateway, {"sleep_ms": 30})
    assert slow_status == 200
    await settled(gateway, nc, pool)

    events = await usage_events(nc, gateway.tenant)
    calls = [e for e in events if e.metric == "api_calls"]
    assert sorted(e.outcome for e in calls) == ["failed", "failed"] + ["success"] * 4
    assert {e.call_id for e in calls} >= {body["call_id"] for _, body in ok}
    by_call = {}
    for event in events:
        by_call.setdefault(event.call_id, {})[event.metric] = event
    first = by_call[ok[0][1]["call_id"]]
    assert first["bytes_in"].value == len(b'{"text": "x"}')  # the body as sent
    assert first["bytes_out"].value == len(b'{"text":"x"}')  # the result as the module encoded it
    assert first["compute_ms"].value >= 1  # whole milliseconds, rounded up
    assert first["api_calls"].module_id == "echo-test" and first["api_calls"].capability == "test.echo"
    assert first["api_calls"].api_key_id  # the caller's key
    slow = next(m for m in by_call.values() if m["api_calls"].outcome == "success" and m["compute_ms"].value >= 30)
    assert slow["compute_ms"].value < 1000
    unrouted = next(m for m in by_call.values() if m["api_calls"].capability == "test.nobody-serves-this")
    assert unrouted["api_calls"].module_id == "" and "compute_ms" not in unrouted and "bytes_out" not in unrouted

    status, usage = await http("GET", f"{gateway.url}/v1/usage", headers={"X-API-Key": gateway.api_key})
    assert status == 200, usage
    assert usage["tenant_id"] == gateway.tenant and usage["granularity"] == "day"
    assert usage["totals"]["api_calls"] == {"success": 4, "failed": 2}
    assert usage["totals"]["bytes_in"]["success"] == sum(
        e.value for e in events if e.metric == "bytes_in" and e.outcome == "success"
    )
    status, hourly = await http(
        "GET",
        f"{gateway.url}/v1/usage?granularity=hour&metric=api_calls&capability=test.echo",
        headers={"X-API-Key": gateway.api_key},
    )
    assert status == 200, hourly
    assert {r["metric"] for r in hourly["usage"]} == {"api_calls"}
    assert hourly["totals"] == {"api_calls": {"success": 4, "failed": 1}}
    status, by_module = await http(
        "GET", f"{gateway.url}/v1/usage?module=echo-test&metric=compute_ms", headers={"X-API-Key": gateway.api_key}
    )
    assert status == 200 and set(by_module["totals"]) == {"compute_ms"}
    assert by_module["totals"]["compute_ms"]["success"] >= 30
    now = datetime.now(UTC)
    month = (
        f"{gateway.url}/v1/usage?granularity=month&from={(now - timedelta(days=40)).date()}&to={now:%Y-%m-%dT%H:%M:%SZ}"
    )
    status, monthly = await http("GET", month, headers={"X-API-Key": gateway.api_key})
    assert status == 200 and monthly["totals"]["api_calls"]["success"] == 4
    assert monthly["usage"][-1]["period"].startswith(f"{now:%Y-%m}-01T00:00:00")


BAD_QUERIES = [
    ("granularity=week", "granularity"),
    ("metric=tokens", "metric"),
    ("capability=Not.Valid", "capability"),
    ("module=a.b", "module"),
    ("from=yesterday", "from"),
    ("from=2025-06-01T00:00:00", "from"),  # no time zone
    ("from=2025-06-02&to=2025-06-01", "from"),
    ("granularity=hour&from=2025-01-01&to=2025-06-01", "from"),  # too many hours
    ("tenant=Bad!", "tenant"),
]


@pytest.mark.parametrize(("query", "parameter"), BAD_QUERIES)
async def test_bad_usage_queries_are_clear_400s(gateway: Gateway, query: str, parameter: str) -> None:
    status, body = await http("GET", f"{gateway.url}/v1/usage?{query}", headers={"X-API-Key": gateway.api_key})
    assert status == 400, body
    assert body["error"]["code"] == "BAD_REQUEST" and body["error"]["details"]["parameter"] == parameter


async def test_usage_is_the_tenants_own_and_needs_billing_read(
    gateway: Gateway, start_gateway: StartGateway, echo: Echo, nc: NATS, pool: asyncpg.Pool
) -> None:
    tenant = await new_tenant(gateway)
    admin = await login(gateway, tenant, await new_user(gateway, tenant, "tenant_admin"))
    user = await login(gateway, tenant, await new_user(gateway, tenant, "user"))
    status, _ = await invoke(gateway, {"text": "mine"}, key=None)
    assert status == 200
    status, _ = await http(
        "POST",
        f"{gateway.url}/v1/capabilities/test.echo/invoke",
        json={"text": "theirs"},
        credential=user["access_token"],
    )
    assert status == 200
    await settled(gateway, nc, pool)
    usage = f"{gateway.url}/v1/usage"
    status, body = await http("GET", usage, credential=admin["access_token"])
    assert status == 200 and body["tenant_id"] == tenant and body["totals"]["api_calls"] == {"success": 1}
    # A plain user may call capabilities but not read the tenant's usage; it may see its limits.
    status, body = await http("GET", usage, credential=user["access_token"])
    assert status == 403 and body["error"]["details"]["needed"] == ["billing:read"]
    status, limits = await http("GET", f"{usage}/limits", credential=user["access_token"])
    assert status == 200 and limits["plan"] == "free"
    assert {item["name"] for item in limits["limits"]} == {"calls", "compute", "bandwidth", "storage"}
    # Another tenant's usage does not exist for a tenant admin; a super admin reads any.
    status, _ = await http("GET", f"{usage}?tenant={gateway.tenant}", credential=admin["access_token"])
    assert status == 404
    status, body = await http("GET", f"{usage}?tenant={tenant}", headers={"X-API-Key": gateway.api_key})
    assert status == 200 and body["totals"]["api_calls"] == {"success": 1}


SLOW_BUCKETS = Plan(
    api_calls=CallLimit(limit=600, window_seconds=60),
    compute_ms=ComputeLimit(capacity=100_000, refill_per_second=0.001),
    bandwidth_bytes=BandwidthLimit(capacity=1_000_000, leak_per_second=0.001),
    storage_bytes=StorageLimit(limit=10**9),
)


async def test_limits_show_every_policy_of_the_plan_and_the_key(
    start_gateway: StartGateway, echo: Echo, nc: NATS
) -> None:
    plans = PlanBook({"slow": SLOW_BUCKETS}, default_plan="slow")
    gateway = await start_gateway(MeteringConfig(plans=plans, publisher=TEST_METERING.publisher))
    key = await issue_key(nc, gateway.tenant, role="user", rate_limit=30)
    await gateway_ready(gateway.url, key)  # the gateway's identity index follows the log
    for _ in range(3):
        assert (await invoke(gateway, {"text": "hi"}, key=key))[0] == 200
    status, body = await http("GET", f"{gateway.url}/v1/usage/limits", headers={"X-API-Key": key})
    assert status == 200, body
    limits = {item["name"]: item for item in body["limits"]}
    assert set(limits) == {"calls", "key-calls", "compute", "bandwidth", "storage"}
    assert limits["key-calls"]["quota"] == 30 and limits["key-calls"]["used"] >= 3
    assert limits["key-calls"]["remaining"] == 27
    assert limits["calls"]["algorithm"] == "sliding_window" and limits["calls"]["quota"] == 600
    assert limits["compute"]["algorithm"] == "token_bucket" and limits["compute"]["used"] >= 3
    assert limits["bandwidth"]["algorithm"] == "leaky_bucket" and limits["bandwidth"]["used"] > 0
    assert limits["storage"]["algorithm"] == "fixed_window" and limits["storage"]["window_seconds"] == 86_400


async def test_storage_is_metered_once_per_write_within_its_fixed_window(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool
) -> None:
    metering = gateway.metering
    limit = metering.plans.plan_of(gateway.tenant).storage_bytes.limit
    write = unique("write")
    first = await metering.record_storage(gateway.tenant, limit - 100, store="files", operation_id=write)
    again = await metering.record_storage(gateway.tenant, limit - 100, store="files", operation_id=write, at=first.at)
    assert again == first  # the same write, recorded twice, counts once
    with pytest.raises(QuotaExceeded) as refused:
        await metering.record_storage(gateway.tenant, 200, store="files", operation_id=unique("write"))
    assert refused.value.policy == "storage" and 0 < refused.value.retry_after <= 86_400
    await metering.record_storage(gateway.tenant, -50, store="files", operation_id=unique("free"))
    await caught_up(nc, pool, "usage")
    async with pool.acquire() as conn:
        total = await conn.fetchval(
            "SELECT sum(value) FROM usage_daily WHERE tenant_id = $1 AND metric = 'storage_bytes'", gateway.tenant
        )
        stores = await conn.fetch("SELECT DISTINCT module_id FROM usage_hourly WHERE tenant_id = $1", gateway.tenant)
    assert total == limit - 150
    assert [r["module_id"] for r in stores] == ["files"]


async def test_rate_limit_headers_on_every_call(gateway: Gateway, echo: Echo) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/capabilities/test.echo/invoke",
            json={"text": "hi"},
            headers={"X-API-Key": gateway.api_key},
        ) as response,
    ):
        assert response.status == 200
        policy, state = response.headers["RateLimit-Policy"], response.headers["RateLimit"]
    assert policy.startswith(
        '"calls";q=600;w=60, "compute";q=60000;w=60;dai-unit="compute-ms", "bandwidth";q=52428800;'
    )
    assert 'qu="content-bytes"' in policy
    assert state.startswith('"calls";r=') and '"compute";r=' in state
