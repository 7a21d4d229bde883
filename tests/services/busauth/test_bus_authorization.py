"""The bus admits only who belongs there: every attack of issue 11, tried against the running platform.

Each attack is made the way an attacker holding a module credential (or nothing) would make it,
and fails with the server's own permissions violation — asserted from the error NATS sends back,
and from the log, which holds nothing the attacker wrote.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from democratic_ai.contracts import MessageType, new_request, subjects
from democratic_ai.contracts.bus import connect
from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.identity_events import ApiKeyIssued, encode_event
from democratic_ai.hub import Hub, Router
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.sdk import Module, capability

from support.bus import Violations, module_connection, register
from support.client import http
from support.gateway import Gateway
from support.names import unique
from support.readme import run_script, section_scripts


async def assert_refused(url: str, **credentials: str) -> None:
    """The server refuses the connection: ``Authorization Violation``."""
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(url, connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=0, **credentials)


def make_module(module_id: str) -> type[Module]:
    class Shouter(Module):
        @capability(
            "test.shout",
            input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
            output_schema={"type": "object"},
        )
        async def shout(self, text: str = "") -> dict:
            return {"text": text.upper()}

    Shouter.module_id = module_id
    return Shouter


@pytest.fixture
async def attacker(
    nats_server: NatsServer, gateway: Gateway, bus_authorizer: None
) -> AsyncIterator[tuple[NATS, Violations, str]]:
    """A module's connection, with its own valid credential: the attacker of these tests."""
    module_id = unique("mallory")
    credential = await register(gateway, module_id, ["test.shout"])
    violations = Violations()
    connection = await module_connection(nats_server, credential, module_id, violations)
    yield connection, violations, module_id
    await connection.close()


async def test_an_anonymous_connection_is_refused(nats_server: NatsServer, bus_authorizer: None) -> None:
    await assert_refused(nats_server.url)
    await assert_refused(nats_server.url, token="dai-module.system.nobody.forged")
    await assert_refused(nats_server.url, user="gateway", password="guessed")


async def test_a_module_cannot_mint_a_super_admin_key(attacker: tuple[NATS, Violations, str], nc: NATS) -> None:
    connection, violations, _ = attacker
    subject = "iam.system.api_key.forged0001"
    event = ApiKeyIssued(
        tenant_id="system",
        meta=Meta(at=datetime.now(UTC)),
        key_id="forged0001",
        prefix="dai_forged000",
        sha256="0" * 64,
        role="super_admin",
    )
    await connection.publish(subject, encode_event(event))
    await violations.wait_for(f'publish to "{subject}"')
    with pytest.raises(NotFoundError):
        await nc.jetstream().get_last_msg("IDENTITY", subject)


async def test_a_module_cannot_read_other_tenants_calls(attacker: tuple[NATS, Violations, str]) -> None:
    connection, violations, _ = attacker
    for subject in ("mcp.req.>", "mcp.call.*.text.summarize", "mcp.res.>", ">"):
        await connection.subscribe(subject)
        await violations.wait_for(f'subscription to "{subject}"')


async def test_a_module_cannot_forge_usage_or_billing(attacker: tuple[NATS, Violations, str], nc: NATS) -> None:
    connection, violations, _ = attacker
    for subject in (
        "usage.acme.api_calls",
        "billing.acme.invoice.2020-01",
        "ratelimit.acme.lease.x",
        "registry.text-tools.registered",
    ):
        await connection.publish(subject, b"{}")
        await violations.wait_for(f'publish to "{subject}"')
    for stream, subject in (("USAGE", "usage.acme.api_calls"), ("BILLING", "billing.acme.invoice.2020-01")):
        with pytest.raises(NotFoundError):
            await nc.jetstream().get_last_msg(stream, subject)


async def test_a_module_cannot_read_the_signing_keys_or_replay_identity(attacker: tuple[NATS, Violations, str]) -> None:
    connection, violations, _ = attacker
    js = connection.jetstream(timeout=1.0)
    with pytest.raises(nats.errors.TimeoutError):
        await js.key_value("dai_jwt_keys")
    await violations.wait_for('publish to "$JS.API.STREAM.INFO.KV_dai_jwt_keys"')
    with pytest.raises(nats.errors.TimeoutError):
        await js.subscribe("iam.>", stream="IDENTITY", ordered_consumer=True)
    await violations.wait_for('publish to "$JS.API.CONSUMER.CREATE.IDENTITY')
    await connection.publish("$JS.API.DIRECT.GET.IDENTITY", b'{"seq": 1}')
    await violations.wait_for('publish to "$JS.API.DIRECT.GET.IDENTITY"')


async def test_a_module_serves_its_capabilities_and_nothing_else(
    nats_server: NatsServer, gateway: Gateway, nc: NATS, hub: Hub, bus_authorizer: None
) -> None:
    module_id = unique("shouter")
    credential = await register(gateway, module_id, ["test.shout"])
    violations = Violations()
    connection = await module_connection(nats_server, credential, module_id, violations)
    module = make_module(module_id)()
    try:
        await module.start(connection)
        answer = await Router(nc, source_id="test").call(
            new_request("test.shout", b'{"text": "hi"}', tenant_id="acme", source_module_id="test")
        )
        assert answer.type == MessageType.RESPONSE, answer
        assert msgspec.json.decode(answer.payload) == {"text": "HI"}
        # Another module's capability, and a direct route under another module's id: refused.
        await connection.subscribe(subjects.call("*", "text.summarize"), queue="text.summarize")
        await violations.wait_for('subscription to "mcp.call.*.text.summarize"')
        await connection.subscribe(subjects.direct("text-tools", "*", "test.shout"), queue="text-tools")
        await violations.wait_for('subscription to "mcp.direct.text-tools.*.test.shout"')
        # Its own capability outside its queue group: refused too (it may not skim every call).
        await connection.subscribe(subjects.call("*", "test.shout"))
        await violations.wait_for('subscription to "mcp.call.*.test.shout"')
        # Announcing or heartbeating as another module.
        for subject in ("hub.announce.text-tools", subjects.heartbeat("text-tools")):
            await connection.publish(subject, b"{}")
            await violations.wait_for(f'publish to "{subject}"')
    finally:
        await module.stop(grace=1.0)
        await connection.close()


async def test_revoking_a_credential_disconnects_the_module_within_a_second(
    nats_server: NatsServer, gateway: Gateway, bus_authorizer: None
) -> None:
    module_id = unique("revoked")
    credential = await register(gateway, module_id, ["test.shout"])
    disconnected = asyncio.Event()

    async def on_disconnect() -> None:
        disconnected.set()

    connection = await module_connection(
        nats_server, credential, module_id, allow_reconnect=False, disconnected_cb=on_disconnect
    )
    status, body = await http("DELETE", f"{gateway.url}/v1/modules/{module_id}", headers=gateway.headers)
    assert status in (200, 204), body
    revoked_at = time.monotonic()
    await asyncio.wait_for(disconnected.wait(), 1.0)
    assert time.monotonic() - revoked_at < 1.0
    await assert_refused(nats_server.url, token=credential)
    await connection.close()


async def test_a_rotated_credential_works_and_the_old_one_is_refused(
    nats_server: NatsServer, gateway: Gateway, bus_authorizer: None
) -> None:
    module_id = unique("rotated")
    old = await register(gateway, module_id, ["test.shout"])
    disconnected = asyncio.Event()

    async def on_disconnect() -> None:
        disconnected.set()

    connection = await module_connection(
        nats_server, old, module_id, allow_reconnect=False, disconnected_cb=on_disconnect
    )
    status, body = await http("POST", f"{gateway.url}/v1/modules/{module_id}/credential", headers=gateway.headers)
    assert status in (200, 201), body
    rotated_at = time.monotonic()
    await asyncio.wait_for(disconnected.wait(), 1.0)
    assert time.monotonic() - rotated_at < 1.0
    await assert_refused(nats_server.url, token=old)
    fresh = await module_connection(nats_server, body["credential"], module_id, allow_reconnect=False)
    assert fresh.is_connected
    await fresh.close()
    await connection.close()


async def test_platform_roles_are_narrow(nats_server: NatsServer) -> None:
    """A leaked hub or projections credential cannot mint keys; the gateway cannot rewrite the registry."""
    for role, subject in (
        ("hub", "iam.system.api_key.x"),
        ("projections", "iam.system.api_key.x"),
        ("projections", "billing.acme.invoice.x"),
        ("gateway", "registry.text-tools.registered"),
    ):
        violations = Violations()
        connection = await connect(nats_server.bus(role), f"test-{role}", error_cb=violations.record)
        try:
            await connection.publish(subject, b"{}")
            await violations.wait_for(f'publish to "{subject}"')
        finally:
            await connection.close()
    violations = Violations()
    connection = await connect(nats_server.bus("gateway"), "test-gateway", error_cb=violations.record)
    try:
        await connection.publish("$JS.API.STREAM.DELETE.IDENTITY", b"")
        await violations.wait_for('publish to "$JS.API.STREAM.DELETE.IDENTITY"')
    finally:
        await connection.close()


async def test_the_readme_example_runs_dai_commands_as_the_operator(
    nats_server: NatsServer, gateway: Gateway, repo_root: Path, tmp_path: Path
) -> None:
    script = section_scripts(repo_root / "README.md", "## Who may do what on the bus")[0]
    # `dai env` reads a running dai up's data dir; here the session's server stands in for one.
    assert 'eval "$(.venv/bin/dai env)"' in script
    exports = "".join(
        f"export {name}={shlex.quote(value)}\n"
        for name, value in {
            **nats_server.environment("operator"),
            "DAI_BUS_CREDENTIAL_FILE": ".dai/credentials/operator.credential",
        }.items()
    )
    script = script.replace('eval "$(.venv/bin/dai env)"\n', exports)
    (tmp_path / ".dai").mkdir()
    (tmp_path / ".dai" / "credentials").symlink_to(nats_server.credentials.folder)
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)  # the README runs .venv/bin/dai
    out, _ = await run_script(script, cwd=tmp_path, env={"PATH": os.environ["PATH"]})
    lines = out.splitlines()
    assert msgspec.json.decode(lines[0])["stream"] == "IDENTITY", out  # the gateway's tenant is there
    assert "STREAMS" in lines and "MODULES" in lines  # dai status, and dai modules after it
