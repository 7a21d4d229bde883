"""GET /v1/modules/{module}/stats against real servers: a module's author sees the calls every tenant
made to it (counts, errors, exact percentiles, and nothing of who called), a viewer too; another
tenant's module answers 404 as reading it does; a bad window answers 400."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts import ErrorCode, MCPMessage

from support.calls import ended_calls, error_record, publish_records, request_record, response_record
from support.client import http
from support.gateway import Gateway
from support.identity import login, new_tenant, new_user
from support.names import unique


class Author:
    """A tenant with a developer who registered a module, and a viewer."""

    def __init__(self, gateway: Gateway, tenant: str, module_id: str, tokens: dict[str, str]) -> None:
        self.gateway, self.tenant, self.module_id, self.tokens = gateway, tenant, module_id, tokens

    @classmethod
    async def create(cls, gateway: Gateway) -> Author:
        tenant = await new_tenant(gateway)
        tokens = {}
        for role in ("developer", "viewer"):
            user = await new_user(gateway, tenant, role)
            tokens[role] = (await login(gateway, tenant, user))["access_token"]
        module_id = unique("stats-mod")
        status, body = await http(
            "POST",
            f"{gateway.url}/v1/modules",
            json={"module_id": module_id, "capabilities": ["test.stats", "test.other"]},
            credential=tokens["developer"],
        )
        assert status == 201, body
        return cls(gateway, tenant, module_id, tokens)

    async def get(self, path: str, role: str = "developer") -> tuple[int, dict]:
        credential = self.gateway.api_key if role == "super_admin" else self.tokens[role]
        return await http("GET", f"{self.gateway.url}/v1/modules/{path}", credential=credential)


def _call(tenant: str, capability: str, at: datetime, ms: float, module: str, user: str = "") -> list[MCPMessage]:
    """A call of ``tenant`` that ``module`` answered after ``ms`` milliseconds."""
    request = request_record(tenant, capability, at)
    request.context.user_id = user
    request.context.api_key_id = f"key-of-{user}" if user else ""
    return [request, response_record(request, at + timedelta(milliseconds=ms), module=module)]


async def test_the_author_sees_every_callers_calls_to_the_module_and_nothing_of_who(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool
) -> None:
    author = await Author.create(gateway)
    other = await Author.create(gateway)  # another tenant, which calls the author's module too
    mine, theirs = author.module_id, other.module_id
    at = datetime.now(UTC) - timedelta(seconds=5)
    failing = request_record(other.tenant, "test.stats", at)
    failing.context.user_id = "user-of-the-other-tenant"
    records = [
        *_call(author.tenant, "test.stats", at, 10, mine, "user-of-the-author"),
        *_call(author.tenant, "test.stats", at, 30, mine),
        *_call(other.tenant, "test.stats", at, 20, mine, "user-of-the-other-tenant"),
        failing,
        error_record(failing, at + timedelta(milliseconds=40), ErrorCode.MODULE_ERROR, source=mine),
        *_call(other.tenant, "test.other", at, 50, mine),
        *_call(other.tenant, "test.stats", at, 999, theirs),  # answered by the other tenant's own module
        request_record(author.tenant, "test.stats", at),  # no module answered it: still running, not counted
    ]
    await publish_records(nc, *records)
    await ended_calls(nc, pool, author.tenant, 2)
    await ended_calls(nc, pool, other.tenant, 4)

    status, body = await author.get(f"{mine}/stats?minutes=5")
    assert status == 200, body
    assert body["module_id"] == mine and body["minutes"] == 5 and len(body["per_minute"]) == 5
    assert sum(m["calls"] for m in body["per_minute"]) == 5 and sum(m["errors"] for m in body["per_minute"]) == 1
    other_capability, stats = body["capabilities"]  # by name: test.other, test.stats
    assert other_capability["capability"] == "test.other" and other_capability["calls"] == 1
    assert other_capability["p50_ms"] == pytest.approx(50.0)
    assert stats["capability"] == "test.stats" and stats["calls"] == 4 and stats["errors"] == 1
    assert stats["success_rate"] == 0.75 and stats["outcomes"] == {"success": 3, "failed": 1}
    # percentile_cont over 10, 20, 30, 40 ms: p50 halfway from 20 to 30, p95 at 0.85 from 30 to 40.
    assert stats["p50_ms"] == pytest.approx(25.0) and stats["p95_ms"] == pytest.approx(38.5)
    assert body["total"]["calls"] == 5 and body["total"]["outcomes"] == {"success": 4, "failed": 1}
    # Aggregates only: no tenant, user, key or call of any caller.
    text = msgspec.json.encode(body).decode()
    for secret in (author.tenant, other.tenant, "user-of", "key-of", *(r.correlation_id for r in records)):
        assert secret not in text, secret

    # A viewer of the author's tenant reads it too, and a super admin reads any module.
    assert (await author.get(f"{mine}/stats?minutes=5", role="viewer"))[1]["total"]["calls"] == 5
    assert (await author.get(f"{mine}/stats?minutes=5", role="super_admin"))[1]["total"]["calls"] == 5
    # The other tenant's module: only the call it answered.
    status, body = await other.get(f"{theirs}/stats?minutes=5")
    assert status == 200 and body["total"]["calls"] == 1 and body["total"]["p50_ms"] == pytest.approx(999.0)


async def test_another_tenants_module_answers_404_as_reading_it_does(gateway: Gateway) -> None:
    author = await Author.create(gateway)
    other = await Author.create(gateway)
    for reader, module in ((other, author.module_id), (author, other.module_id)):
        read = await reader.get(module)
        stats = await reader.get(f"{module}/stats")
        assert read[0] == stats[0] == 404 and stats[1]["error"]["code"] == "NOT_FOUND"
        assert stats[1] == read[1]
    status, body = await author.get("no-such-module/stats")
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"


async def test_the_window_is_one_to_1440_minutes(gateway: Gateway) -> None:
    author = await Author.create(gateway)
    status, body = await author.get(f"{author.module_id}/stats")
    assert status == 200 and body["minutes"] == 60 and len(body["per_minute"]) == 60
    assert body["capabilities"] == [] and body["total"]["calls"] == 0 and body["total"]["success_rate"] is None
    status, body = await author.get(f"{author.module_id}/stats?minutes=1440")
    assert status == 200 and len(body["per_minute"]) == 1440
    for minutes in ("0", "1441", "ten", "-5", "1.5", "%EF%BC%95"):  # the last: a full-width 5
        status, body = await author.get(f"{author.module_id}/stats?minutes={minutes}")
        assert status == 400 and body["error"]["code"] == "BAD_REQUEST", (minutes, body)
        assert body["error"]["details"]["parameter"] == "minutes", minutes
