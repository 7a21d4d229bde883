"""Commands validate everything they append: a request is refused with a 4xx naming the field,
or its event is appended *and* folded by its projection — never an event a reader cannot fold.

The property test drives every identity and billing command over HTTP with inputs hypothesis
generates (NUL bytes, huge integers, long and odd strings, unknown enumerations, dates of any
kind). Hypothesis runs in a worker thread and sends each example's requests to the test's event
loop, where the gateway and the projections run; examples are derandomized, so every run tries
the same inputs.
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from nats.aio.client import Client as NATS

from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.fields import INT32_MAX
from democratic_ai.services.gateway.state import USERS
from democratic_ai.services.identity import Invalid

from support.client import http
from support.gateway import Gateway
from support.names import unique
from support.projections import caught_up

PASSWORD = "correct horse battery staple"
EXAMPLES = 40  # per command: about 7 s for all of them


async def _stream_count(nc: NATS, stream: str, subjects: str) -> int:
    info = await nc.jetstream().stream_info(stream, subjects_filter=subjects)
    return sum((info.state.subjects or {}).values())


async def _quarantined(pool: asyncpg.Pool, tenant: str) -> list[asyncpg.Record]:
    """Dead letters of this tenant's events (other tests' forged events are not ours to judge)."""
    async with pool.acquire() as conn:
        return await conn.fetch(
            "SELECT projection, sequence, error FROM projection_dead_letters WHERE subject LIKE $1 OR subject LIKE $2",
            f"iam.{tenant}.%",
            f"billing.{tenant}.%",
        )


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"rate_limit": 123456789012345678901234567890}, "$.rate_limit"),
        ({"rate_limit": INT32_MAX + 1}, "$.rate_limit"),
        ({"rate_limit": 0}, "$.rate_limit"),
        ({"name": "a\u0000b"}, "$.name"),
        ({"name": "n" * 201}, "$.name"),
        ({"scopes": ["module:use\u0000"]}, "$.scopes[0]"),
    ],
)
async def test_the_requests_that_stopped_the_platform_are_refused(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool, body: dict[str, Any], path: str
) -> None:
    keys = f"iam.{gateway.tenant}.api_key.>"
    before = await _stream_count(nc, "IDENTITY", keys)
    url = f"{gateway.url}/v1/tenants/{gateway.tenant}/api-keys"
    status, answer = await http("POST", url, json=body, credential=gateway.api_key)
    assert status == 422, answer
    assert answer["error"]["code"] == "VALIDATION_FAILED" and answer["error"]["details"]["path"] == path
    assert await _stream_count(nc, "IDENTITY", keys) == before  # nothing appended
    # The platform still serves, and the identity projection folds what comes next.
    status, key = await http("POST", url, json={"name": "ok", "rate_limit": INT32_MAX}, credential=gateway.api_key)
    assert status == 201, key
    await caught_up(nc, pool, "identity")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT rate_limit FROM api_keys WHERE key_id = $1", key["key_id"]) == INT32_MAX
    assert await _quarantined(pool, gateway.tenant) == []


async def test_the_services_refuse_what_the_gateway_would(gateway: Gateway, nc: NATS) -> None:
    """The same limits hold for a command that does not come through HTTP: the event's types."""
    assert gateway.app is not None
    service = gateway.app[USERS]
    keys = f"iam.{gateway.tenant}.api_key.>"
    before = await _stream_count(nc, "IDENTITY", keys)
    meta = Meta(at=datetime.now(UTC))
    for changes, field in (
        ({"rate_limit": 2**40}, "rate_limit"),
        ({"name": "a\x00b"}, "name"),
        ({"user_id": "u" * 129}, "user_id"),
    ):
        with pytest.raises(Invalid) as refused:
            await service.issue_api_key(meta, tenant_id=gateway.tenant, role="super_admin", **changes)
        assert refused.value.details["field"] == field
    with pytest.raises(Invalid) as refused:
        await service.create_tenant(meta, unique("t"), "x\x00y")
    assert refused.value.details["field"] == "name"
    assert await _stream_count(nc, "IDENTITY", keys) == before


def test_every_event_type_refuses_what_its_read_model_cannot_hold() -> None:
    from democratic_ai.contracts import billing_events, identity_events
    from democratic_ai.contracts.fields import EventRejected

    meta = Meta(at=datetime.now(UTC))
    cases = [
        (
            identity_events.encode_event,
            identity_events.TenantCreated(tenant_id="Not A Token", meta=meta, name="x"),
            "$.tenant_id",
            "matching",
        ),
        (
            identity_events.encode_event,
            identity_events.UserRegistered(
                tenant_id="t", meta=meta, user_id="u", email="a\x00@b.c", role="user", password_hash="h"
            ),
            "$.email",
            "without NUL (\\u0000)",
        ),
        (
            identity_events.encode_event,
            identity_events.TenantSuspended(tenant_id="t", meta=Meta(at=meta.at, user_agent="\udcff"), reason=""),
            "$",
            "not valid UTF-8",
        ),
        (
            billing_events.encode_event,
            billing_events.SubscriptionCancelled(tenant_id="t", meta=meta, reason="r" * 2001),
            "$.reason",
            "length <= 2000",
        ),
        (
            billing_events.encode_event,
            billing_events.PaymentFailed(
                tenant_id="t",
                meta=meta,
                invoice_id="i",
                stripe_event_id="e",
                stripe_invoice_id="s",
                amount=2**63,
                currency="JPY",
            ),
            "$.amount",
            "<= 9223372036854775807",
        ),
    ]
    for encode, event, path, words in cases:
        with pytest.raises(EventRejected) as refused:
            encode(event)
        assert (refused.value.path, words in refused.value.message) == (path, True), refused.value.message


# The property -------------------------------------------------------------------------------------

# Each field is a valid value or an adversarial one, so that examples often differ from a valid
# request in one field only: a request refused for its first bad field tests nothing about the others.
_ODD = st.sampled_from(
    [
        "",
        " ",
        "a\x00b",
        "\x00",
        "\u2028",
        "İ" * 130,
        "😀" * 70,
        "x" * 201,
        "x" * 2001,
        "'; DROP TABLE users; --",
        "\\u0000",
        "\ud800",
    ]
)
TEXT = st.one_of(st.text(max_size=24), st.text(min_size=190, max_size=260), _ODD)


def valid_or(valid: st.SearchStrategy[Any], adversarial: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(valid, adversarial)


INTS = st.one_of(st.integers(-3, 3), st.integers(INT32_MAX - 2, INT32_MAX + 2), st.integers(-(2**70), 2**70))
TOKEN = st.from_regex(r"[a-z0-9_-]{1,40}", fullmatch=True)
NAME = valid_or(st.just("Acme"), TEXT)
ROLE = valid_or(st.sampled_from(["super_admin", "tenant_admin", "developer", "user", "viewer"]), TEXT)
EMAIL = valid_or(
    st.builds(
        lambda local: f"{local}-{unique('u')}@example.com",
        st.text(alphabet=string.ascii_letters + "\x00é+.İ", min_size=1, max_size=20),
    ),
    TEXT,
)
PASSWORDS = valid_or(st.just(PASSWORD), TEXT)
WHEN = valid_or(
    st.builds(lambda days: (datetime.now(UTC) + timedelta(days=days)).isoformat(), st.integers(1, 3_000_000)),
    st.one_of(st.datetimes(timezones=st.sampled_from([UTC, None])).map(datetime.isoformat), TEXT),
)
SCOPES = valid_or(
    st.just(["module:use"]),
    st.lists(st.one_of(st.sampled_from(["module:use", "module:read", "*", "billing:read"]), TEXT), max_size=3),
)
RATE_LIMIT = valid_or(st.integers(1, 1000), st.one_of(st.none(), INTS))
TOOLSET = valid_or(
    st.just(["test.echo", "text.*"]),
    st.lists(st.one_of(st.sampled_from(["*", "text.*.x", "a.b", "A.B"]), TEXT), max_size=3),
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class Command:
    name: str
    requests: st.SearchStrategy[Request]
    projection: str  # the projection that must fold what the command appends
    stream: str


def _commands(tenant: str, user_id: str) -> list[Command]:
    t = f"/v1/tenants/{tenant}"

    def body(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries({}, optional=dict(fields))

    return [
        Command(
            "create tenant",
            st.builds(
                lambda b: Request("POST", "/v1/tenants", b),
                st.fixed_dictionaries(
                    {"tenant_id": valid_or(st.builds(lambda: unique("p")), st.one_of(TOKEN, TEXT))},
                    optional={"name": NAME},
                ),
            ),
            "identity",
            "IDENTITY",
        ),
        Command(
            "suspend tenant",
            st.builds(
                lambda b: Request("POST", "{new_tenant}/suspend", b), body(reason=valid_or(st.just("unpaid"), TEXT))
            ),
            "identity",
            "IDENTITY",
        ),
        Command(
            "reinstate tenant",
            st.builds(
                lambda b: Request("POST", "{new_tenant}/reinstate", b), body(reason=valid_or(st.just("paid"), TEXT))
            ),
            "identity",
            "IDENTITY",
        ),
        Command(
            "rename tenant",
            st.builds(lambda b: Request("PATCH", "{new_tenant}", b), st.fixed_dictionaries({"name": NAME})),
            "identity",
            "IDENTITY",
        ),
        Command(
            "create user",
            st.builds(
                lambda b: Request("POST", f"{t}/users", b),
                st.fixed_dictionaries({"email": EMAIL, "password": PASSWORDS}, optional={"role": ROLE}),
            ),
            "identity",
            "IDENTITY",
        ),
        Command(
            "change user",
            st.builds(lambda b: Request("PATCH", f"{t}/users/{user_id}", b), body(role=ROLE, password=PASSWORDS)),
            "identity",
            "IDENTITY",
        ),
        Command(
            "deactivate a user",
            st.builds(lambda u: Request("POST", f"{t}/users/{u}/deactivate"), valid_or(st.just("{new_user}"), TOKEN)),
            "identity",
            "IDENTITY",
        ),
        Command(
            "issue API key",
            st.builds(
                lambda b: Request("POST", f"{t}/api-keys", b),
                body(
                    name=NAME,
                    scopes=SCOPES,
                    expires_at=WHEN,
                    rate_limit=RATE_LIMIT,
                    capabilities=TOOLSET,
                    toolset=st.one_of(st.just("tools"), TEXT),
                ),
            ),
            "identity",
            "IDENTITY",
        ),
        Command(
            "define a toolset",
            st.builds(
                lambda n, b: Request("PUT", f"{t}/toolsets/{n}", b),
                valid_or(st.just("tools"), TOKEN),
                st.fixed_dictionaries({"capabilities": TOOLSET}),
            ),
            "identity",
            "IDENTITY",
        ),
        Command(
            "delete a toolset",
            st.builds(lambda n: Request("DELETE", f"{t}/toolsets/{n}"), valid_or(st.just("tools"), TOKEN)),
            "identity",
            "IDENTITY",
        ),
        Command(
            "revoke API key",
            st.builds(lambda k: Request("DELETE", f"{t}/api-keys/{k}"), st.one_of(st.just("{new_key}"), TOKEN)),
            "identity",
            "IDENTITY",
        ),
        Command(
            "log in",
            st.builds(
                lambda b: Request("POST", "/v1/auth/login", b),
                st.fixed_dictionaries(
                    {"tenant_id": st.one_of(st.just(tenant), TEXT), "email": EMAIL, "password": PASSWORDS}
                ),
            ),
            "identity",
            "IDENTITY",
        ),
        Command(
            "refresh",
            st.builds(lambda b: Request("POST", "/v1/auth/refresh", b), st.fixed_dictionaries({"refresh_token": TEXT})),
            "identity",
            "IDENTITY",
        ),
        Command(
            "choose a plan",
            st.builds(
                lambda b: Request("PUT", "/v1/billing/plan", b),
                st.fixed_dictionaries(
                    {"plan": st.one_of(st.sampled_from(["free", "starter", "pro", "enterprise"]), TEXT)},
                    optional={
                        "interval": st.one_of(st.sampled_from(["month", "year"]), TEXT),
                        "time_zone": st.one_of(st.sampled_from(["Asia/Tokyo", "Europe/Berlin", "UTC"]), TEXT),
                    },
                ),
            ),
            "billing",
            "BILLING",
        ),
        Command("cancel the plan", st.just(Request("DELETE", "/v1/billing/plan")), "billing", "BILLING"),
        Command(
            "close a period",
            st.builds(
                lambda b: Request("POST", "/v1/billing/close-period", b),
                body(
                    tenant_id=st.one_of(st.just(tenant), TEXT),
                    period=st.one_of(st.sampled_from(["2020-01", "1999-13"]), TEXT),
                ),
            ),
            "billing",
            "BILLING",
        ),
    ]


def _hypothesis(
    loop: asyncio.AbstractEventLoop, strategy: st.SearchStrategy[Request], check: Callable[[Request], Awaitable[None]]
) -> None:
    """Run the property in this (worker) thread; each example's check runs on ``loop``."""

    @settings(
        max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
    )
    @given(strategy)
    def prop(request: Request) -> None:
        asyncio.run_coroutine_threadsafe(check(request), loop).result(timeout=60)

    prop()


async def test_every_command_is_refused_with_4xx_or_appended_and_folded(
    gateway: Gateway, nc: NATS, pool: asyncpg.Pool, forget_logins: None
) -> None:
    tenant = gateway.tenant
    status, user = await http(
        "POST",
        f"{gateway.url}/v1/tenants/{tenant}/users",
        json={"email": f"{unique('p')}@example.com", "password": PASSWORD, "role": "developer"},
        credential=gateway.api_key,
    )
    assert status == 201, user
    loop = asyncio.get_running_loop()
    outcomes: dict[str, set[int]] = {}
    js = nc.jetstream()
    # Every event appended from here on is this test's; none of them may be quarantined.
    start = {stream: (await js.stream_info(stream)).state.last_seq for stream in ("IDENTITY", "BILLING")}

    async def quarantined() -> list[asyncpg.Record]:
        async with pool.acquire() as conn:
            return await conn.fetch(
                "SELECT projection, stream, sequence, subject, error FROM projection_dead_letters"
                " WHERE (stream = 'IDENTITY' AND sequence > $1) OR (stream = 'BILLING' AND sequence > $2)",
                start["IDENTITY"],
                start["BILLING"],
            )

    async def placeholders(path: str) -> str:
        if "{new_tenant}" in path:
            status, made = await http(
                "POST", f"{gateway.url}/v1/tenants", json={"tenant_id": unique("s")}, credential=gateway.api_key
            )
            assert status == 201, made
            path = path.replace("{new_tenant}", f"/v1/tenants/{made['tenant_id']}")
        if "{new_user}" in path:
            status, made = await http(
                "POST",
                f"{gateway.url}/v1/tenants/{tenant}/users",
                credential=gateway.api_key,
                json={"email": f"{unique('d')}@example.com", "password": PASSWORD},
            )
            assert status == 201, made
            path = path.replace("{new_user}", made["user_id"])
        if "{new_key}" in path:
            status, made = await http(
                "POST", f"{gateway.url}/v1/tenants/{tenant}/api-keys", json={}, credential=gateway.api_key
            )
            assert status == 201, made
            path = path.replace("{new_key}", made["key_id"])
        return path

    for command in _commands(tenant, user["user_id"]):

        async def check(request: Request, command: Command = command) -> None:
            path = await placeholders(request.path)
            before = (await nc.jetstream().stream_info(command.stream)).state.last_seq
            status, answer = await http(
                request.method, f"{gateway.url}{path}", json=request.body, credential=gateway.api_key
            )
            outcomes.setdefault(command.name, set()).add(status)
            assert status < 500, (command.name, request, answer)
            if status >= 400:
                assert answer["error"]["code"], answer  # a stable code, and (for bad fields) the field
                if status == 422:
                    details = answer["error"]["details"]
                    assert details.get("path") or details.get("field"), answer
            after = (await nc.jetstream().stream_info(command.stream)).state.last_seq
            if after > before:  # appended (a refused login is appended too): it must be folded
                await caught_up(nc, pool, command.projection)
                assert await quarantined() == [], (command.name, request)

        await asyncio.to_thread(_hypothesis, loop, command.requests, check)

    # The property ran both ways: some inputs were refused and some were appended.
    statuses = set().union(*outcomes.values())
    assert {s for s in statuses if 200 <= s < 300} and {s for s in statuses if 400 <= s < 500}
    await caught_up(nc, pool, "identity")
    await caught_up(nc, pool, "billing")
    assert await quarantined() == []
