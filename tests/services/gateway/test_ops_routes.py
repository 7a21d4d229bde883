"""The operators' API: streams, live instances, projections with their quarantine, and retrying
one quarantined event — for super admins only, relayed to the projections worker over NATS."""

from __future__ import annotations

import asyncpg
from nats.aio.client import Client as NATS

from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.projections import PROJECTIONS
from democratic_ai.sdk import Module, capability

from support.bus import module_connection
from support.client import http
from support.gateway import Gateway
from support.identity import login, new_tenant, new_user
from support.names import unique
from support.quarantine import PoisonValues, fix_poison, quarantine_one
from support.waiting import eventually


def _echo(module_id: str) -> Module:
    class Repeat(Module):
        @capability("test.repeat", input_schema={"type": "object"}, output_schema={"type": "object"})
        async def repeat(self) -> dict:
            return {}

    Repeat.module_id = module_id
    return Repeat()


async def test_a_super_admin_sees_projections_and_retries_a_quarantined_event_after_the_fix(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool, ops_desk: None, poison: PoisonValues
) -> None:
    sequence = await quarantine_one(nc, pool, poison)
    status, report = await http("GET", f"{gateway.url}/v1/ops/projections", credential=gateway.api_key)
    assert status == 200, report
    names = [p["name"] for p in report["projections"]]
    assert set(PROJECTIONS) | {poison.name} == set(names)
    [mine] = [p for p in report["projections"] if p["name"] == poison.name]
    assert (mine["applied"], mine["lag_events"], mine["quarantined"]) == (sequence, 0, 1)
    assert {"stream_last", "lag_seconds", "stream"} <= set(mine)
    [letter] = [q for q in report["quarantined"] if q["projection"] == poison.name]
    assert (letter["sequence"], letter["subject"], letter["attempts"]) == (sequence, poison.filter_subject, 1)
    assert "DataError" in letter["error"] and "payload" not in letter
    assert report["quarantined_total"] >= 1

    retry = f"{gateway.url}/v1/ops/projections/{poison.name}/quarantine/{sequence}/retry"
    status, outcome = await http("POST", retry, credential=gateway.api_key)
    assert status == 200, outcome
    assert (outcome["applied"], outcome["attempts"]) == (False, 2) and "DataError" in outcome["error"]

    await fix_poison(pool)
    status, outcome = await http("POST", retry, credential=gateway.api_key)
    assert (status, outcome["applied"]) == (200, True), outcome
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT value FROM ops_poison_values WHERE sequence = $1", sequence) == 2**40
    status, report = await http("GET", f"{gateway.url}/v1/ops/projections", credential=gateway.api_key)
    assert [q for q in report["quarantined"] if q["projection"] == poison.name] == []

    status, body = await http("POST", retry, credential=gateway.api_key)
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND"), body
    status, body = await http(
        "POST", f"{gateway.url}/v1/ops/projections/nope/quarantine/1/retry", credential=gateway.api_key
    )
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND"), body
    status, body = await http(
        "POST", f"{gateway.url}/v1/ops/projections/{poison.name}/quarantine/-1/retry", credential=gateway.api_key
    )
    assert (status, body["error"]["code"]) == (422, "VALIDATION_FAILED"), body


async def test_without_a_projections_worker_the_report_is_not_ready(gateway: Gateway) -> None:
    status, body = await http("GET", f"{gateway.url}/v1/ops/projections", credential=gateway.api_key)
    assert (status, body["error"]["code"]) == (503, "NOT_READY"), body
    assert "dai projections run" in body["error"]["message"]


async def test_a_super_admin_sees_the_streams(gateway: Gateway) -> None:
    status, body = await http("GET", f"{gateway.url}/v1/ops/streams", credential=gateway.api_key)
    assert status == 200, body
    streams = {s["name"]: s for s in body["streams"]}
    assert {"MCP", "USAGE", "IDENTITY", "BILLING", "REGISTRY"} <= set(streams)
    identity = streams["IDENTITY"]
    assert identity["messages"] > 0 and identity["bytes"] > 0 and identity["last_seq"] >= identity["messages"]
    assert identity["subjects"] == ["iam.>"] and identity["last_time"].endswith("Z")


async def test_live_instances_for_the_operator_and_for_the_module_s_own_tenant(
    gateway: Gateway, nats_server: NatsServer, bus_authorizer: None
) -> None:
    tenant = await new_tenant(gateway)
    admin = await new_user(gateway, tenant, "tenant_admin")
    token = (await login(gateway, tenant, admin))["access_token"]
    module_id = unique("repeat")
    status, body = await http(
        "POST",
        f"{gateway.url}/v1/modules",
        json={"module_id": module_id, "capabilities": ["test.repeat"]},
        credential=token,
    )
    assert status == 201, body
    connection = await module_connection(nats_server, body["credential"], module_id)
    module = _echo(module_id)
    await module.start(connection)
    try:

        async def listed() -> list[dict]:
            status, body = await http("GET", f"{gateway.url}/v1/modules/{module_id}/instances", credential=token)
            assert status == 200, body
            return body["instances"]

        [instance] = await eventually(listed, "the module's instance to heartbeat", timeout=5, interval=0.1)
        assert (instance["module_id"], instance["tenant_id"], instance["capabilities"]) == (
            module_id,
            tenant,
            ["test.repeat"],
        )
        status, body = await http("GET", f"{gateway.url}/v1/ops/instances", credential=gateway.api_key)
        assert status == 200 and instance in body["instances"], body
        # Another tenant's admin does not see it.
        other = await new_tenant(gateway)
        stranger = await login(gateway, other, await new_user(gateway, other, "tenant_admin"))
        status, body = await http(
            "GET", f"{gateway.url}/v1/modules/{module_id}/instances", credential=stranger["access_token"]
        )
        assert status == 404, body
    finally:
        await module.stop(grace=0.5)
        await connection.close()


async def test_a_tenant_admin_is_refused_every_ops_route(gateway: Gateway, ops_desk: None) -> None:
    tenant = await new_tenant(gateway)
    token = (await login(gateway, tenant, await new_user(gateway, tenant, "tenant_admin")))["access_token"]
    for method, path in (
        ("GET", "/v1/ops/streams"),
        ("GET", "/v1/ops/instances"),
        ("GET", "/v1/ops/projections"),
        ("POST", "/v1/ops/projections/identity/quarantine/1/retry"),
    ):
        status, body = await http(method, f"{gateway.url}{path}", credential=token)
        assert (status, body["error"]["code"]) == (403, "FORBIDDEN"), (path, body)
