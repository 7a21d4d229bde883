"""Whom a module works for: nested calls and events carry the caller's tenant; credentials name the owner."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts import decode, subjects
from democratic_ai.sdk import CallError, Chunk, Client, Module, ModuleConfig, capability
from democratic_ai.sdk.credentials import parse_module_credential
from democratic_ai.sdk.errors import CredentialError, TenantError

from support.names import unique

ANY = {"type": "object"}


class Inner(Module):
    """Says which tenant it serves, as a module that keeps data per tenant would need to know."""

    module_id = "tenancy-inner-test"

    @capability("tenancy.whoami", ANY)
    async def whoami(self) -> dict:
        return {"tenant": self.current_tenant}


class Outer(Module):
    """Calls the inner module while serving a call: plainly, streamed, with or without naming a tenant."""

    module_id = "tenancy-outer-test"

    @capability("tenancy.relay", {"type": "object", "properties": {"tenant": {"type": "string"}}})
    async def relay(self, tenant: str | None = None, delay_ms: int = 0) -> dict:
        await asyncio.sleep(delay_ms / 1000)  # lets concurrent calls of several tenants interleave
        inner = await self.client.call("tenancy.whoami", tenant=tenant)
        await self.client.publish_event("tenancy.relayed", {"inner": inner["tenant"]})
        return {"outer": self.current_tenant, "inner": inner["tenant"]}

    @capability("tenancy.relay-stream", ANY)
    async def relay_stream(self) -> AsyncIterator[Any]:
        async for chunk in self.client.stream("tenancy.whoami"):
            yield {"inner": chunk.data["tenant"]}
        yield Chunk({"inner": (await self.client.call("tenancy.whoami"))["tenant"]}, progress=1.0)


@pytest.fixture
async def inner(nc: NATS) -> AsyncIterator[Inner]:
    module = Inner()
    await module.start(nc)
    yield module
    await module.stop(grace=1.0)


async def _started(nc: NATS, module: Module) -> Module:
    await module.start(nc)
    return module


async def test_a_nested_call_carries_the_tenant_of_the_call_being_served(nc: NATS, inner: Inner) -> None:
    outer = await _started(nc, Outer())  # a platform module
    try:
        acme, globex = unique("acme"), unique("globex")
        events = await nc.subscribe(subjects.event("*", "tenancy.relayed"))
        answers = await asyncio.gather(
            *(
                Client(nc, tenant=tenant).call("tenancy.relay", {"delay_ms": delay})
                for tenant, delay in ((acme, 30), (globex, 0), (acme, 0), (globex, 30))
            )
        )
        assert [a["inner"] for a in answers] == [acme, globex, acme, globex]
        assert [a["outer"] for a in answers] == [acme, globex, acme, globex]
        published = [await events.next_msg(timeout=2) for _ in range(4)]
        await events.unsubscribe()
        # Each event went out on the subject of the caller's tenant, and says so in its body.
        assert sorted(m.subject for m in published) == sorted(
            subjects.event(t, "tenancy.relayed") for t in (acme, acme, globex, globex)
        )
        assert all(decode(m.data).context.tenant_id == m.subject.split(".")[2] for m in published)
    finally:
        await outer.stop(grace=1.0)


async def test_a_streamed_call_carries_its_tenant_into_nested_calls(nc: NATS, inner: Inner) -> None:
    outer = await _started(nc, Outer())
    try:
        acme = unique("acme")
        chunks = [chunk.data async for chunk in Client(nc, tenant=acme).stream("tenancy.relay-stream")]
        assert chunks == [{"inner": acme}, {"inner": acme}]
        plain = await Client(nc, tenant=acme).call("tenancy.relay-stream")  # the last data, when not streamed
        assert plain == {"inner": acme}
    finally:
        await outer.stop(grace=1.0)


async def test_outside_a_call_a_module_acts_for_its_own_tenant(nc: NATS, inner: Inner) -> None:
    acme = unique("acme")
    platform, owned = await _started(nc, Outer()), await _started(nc, Outer(ModuleConfig(tenant=acme)))
    try:
        assert (platform.current_tenant, owned.current_tenant) == ("system", acme)
        assert await platform.client.call("tenancy.whoami") == {"tenant": "system"}
        assert await owned.client.call("tenancy.whoami") == {"tenant": acme}
        other = unique("other")
        assert await platform.client.call("tenancy.whoami", tenant=other) == {"tenant": other}
    finally:
        await platform.stop(grace=1.0)
        await owned.stop(grace=1.0)


async def test_a_tenant_module_may_name_its_own_or_its_callers_tenant_and_no_other(nc: NATS, inner: Inner) -> None:
    acme, globex, initech = unique("acme"), unique("globex"), unique("initech")
    owned = await _started(nc, Outer(ModuleConfig(tenant=acme)))
    try:
        with pytest.raises(TenantError, match=globex):
            await owned.client.call("tenancy.whoami", tenant=globex)
        with pytest.raises(TenantError):
            await anext(owned.client.stream("tenancy.whoami", tenant=globex))
        caller = Client(nc, tenant=globex)  # globex calls acme's module: it may call for globex or acme
        events = await nc.subscribe(subjects.event("*", "tenancy.relayed"))
        assert await caller.call("tenancy.relay") == {"outer": globex, "inner": globex}
        assert await caller.call("tenancy.relay", {"tenant": globex}) == {"outer": globex, "inner": globex}
        assert await caller.call("tenancy.relay", {"tenant": acme}) == {"outer": globex, "inner": acme}
        with pytest.raises(CallError) as refused:
            await caller.call("tenancy.relay", {"tenant": initech})
        assert refused.value.code == "MODULE_ERROR"
        # Its events stay in acme's space, whoever it serves: the bus lets it publish there only.
        published = [await events.next_msg(timeout=2) for _ in range(3)]
        await events.unsubscribe()
        assert {m.subject for m in published} == {subjects.event(acme, "tenancy.relayed")}
        with pytest.raises(TenantError):
            await owned.client.publish_event("tenancy.relayed", {}, tenant=globex)
    finally:
        await owned.stop(grace=1.0)


def _credential(tenant: str, module_id: str) -> str:
    return f"dai-module.{tenant}.{module_id}.{secrets.token_urlsafe(32)}"


def test_a_credential_names_the_tenant_that_owns_the_module() -> None:
    credential = _credential("acme", Outer.module_id)
    named = parse_module_credential(credential)
    assert (named.tenant, named.module_id) == ("acme", Outer.module_id)
    config = Outer.config_for_credential(credential, ModuleConfig(heartbeat_interval=0.5))
    assert (config.tenant, config.heartbeat_interval) == ("acme", 0.5)
    assert Outer(config).tenant == "acme"
    assert Outer().tenant == "system"


def test_a_credential_of_another_module_or_malformed_is_refused_without_echoing_it() -> None:
    other = _credential("acme", Inner.module_id)
    with pytest.raises(CredentialError, match=f"for module '{Inner.module_id}'.*'{Outer.module_id}'"):
        Outer.config_for_credential(other)
    secret = secrets.token_urlsafe(32)
    for bad in (
        secret,
        f"dai-module.acme.{secret}",
        f"dai-modul.acme.m.{secret}",
        "dai-module.Acme.m." + secret,
        "dai-module.acme.m.short",
    ):
        with pytest.raises(CredentialError) as refused:
            parse_module_credential(bad)
        assert secret not in str(refused.value)
    with pytest.raises(subjects.InvalidSubjectToken):
        ModuleConfig(tenant="Not A Tenant")
