"""REGISTRY events carry a version; version-1 events, as they were written, still fold into today's model."""

from __future__ import annotations

import hashlib
import json

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts.registry_events import VERSION, CapabilitySpec, ModuleManifest, decode_event, upcast_v1_v2
from democratic_ai.hub import Hub, Registrar
from democratic_ai.projections import RegistryProjection, rebuild, verify
from democratic_ai.schemas import migrate, migrations

from support.names import unique


def _v1_manifest(module_id: str) -> dict:
    return {
        "module_id": module_id,
        "name": "Old",
        "version": "0.9.0",
        "description": "written by v1",
        "capabilities": [
            {
                "action": "legacy.echo",
                "description": "",
                "input_schema": {"type": "object"},
                "output_schema": {},
                "streaming": False,
            }
        ],
    }


def _v1_event(kind: str, manifest: dict, at: str) -> bytes:
    """The bytes a v1 writer appended: ``v`` 1 and a bare hex digest of the manifest."""
    digest = hashlib.sha256(msgspec.json.encode(manifest, order="sorted")).hexdigest()  # every field of v1's manifest
    return json.dumps({"type": kind, "v": 1, "manifest": manifest, "digest": digest, "at": at}).encode()


def _v2_event(kind: str, manifest: dict, at: str) -> bytes:
    """The bytes a v2 writer appended: ``v`` 2, a ``sha256:`` digest, no ``max_input_bytes``."""
    digest = "sha256:" + hashlib.sha256(msgspec.json.encode(manifest, order="sorted")).hexdigest()
    return json.dumps({"type": kind, "v": 2, "manifest": manifest, "digest": digest, "at": at}).encode()


def test_v1_is_upcast_and_unknown_versions_are_refused() -> None:
    manifest = _v1_manifest("old-module")
    event = decode_event(_v1_event("module.registered", manifest, "2024-01-02T03:04:05Z"))
    assert event.v == VERSION == 3
    assert event.digest == msgspec.convert(manifest, ModuleManifest).digest()
    assert event.digest.startswith("sha256:") and len(event.digest) == len("sha256:") + 64
    assert upcast_v1_v2(msgspec.structs.replace(event, v=1, digest="ab")).digest == "sha256:ab"
    zero = json.loads(_v1_event("module.updated", manifest, "2024-01-02T03:04:05Z"))
    with pytest.raises(msgspec.ValidationError, match="version 0"):
        decode_event(json.dumps({**zero, "v": 0}).encode())


def test_v2_is_upcast_to_v3_declaring_no_input_limit() -> None:
    manifest = _v1_manifest("v2-module")
    event = decode_event(_v2_event("module.registered", manifest, "2025-01-02T03:04:05Z"))
    assert event.v == 3 and event.manifest.capabilities[0].max_input_bytes is None
    # Declaring nothing keeps the v2 digest (no module is recorded again after an upgrade) ...
    assert event.digest == event.manifest.digest()
    # ... and declaring a limit is a change of the manifest.
    spec = msgspec.structs.replace(event.manifest.capabilities[0], max_input_bytes=4096)
    assert msgspec.structs.replace(event.manifest, capabilities=(spec,)).digest() != event.digest
    with pytest.raises(msgspec.ValidationError, match="max_input_bytes"):
        msgspec.convert({"action": "a.b", "max_input_bytes": 0}, CapabilitySpec)


async def test_v1_events_replay_into_the_current_read_model(nc: NATS, pool: asyncpg.Pool) -> None:
    module_id = unique("legacy")
    manifest = _v1_manifest(module_id)
    js = nc.jetstream()
    await js.publish(
        f"registry.{module_id}.registered", _v1_event("module.registered", manifest, "2024-01-02T03:04:05Z")
    )
    updated = {**manifest, "version": "0.9.1"}
    await js.publish(f"registry.{module_id}.updated", _v1_event("module.updated", updated, "2024-02-03T04:05:06Z"))

    await rebuild(js, pool, RegistryProjection())

    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM registry_modules WHERE module_id = $1", module_id)
        actions = await conn.fetch(
            "SELECT action, input_schema FROM registry_capabilities WHERE module_id = $1", module_id
        )
    assert row["version"] == "0.9.1"
    assert row["digest"] == msgspec.convert(updated, ModuleManifest).digest()
    assert row["registered_at"].isoformat() == "2024-01-02T03:04:05+00:00"
    assert row["updated_at"].isoformat() == "2024-02-03T04:05:06+00:00"
    assert [(a["action"], a["input_schema"]) for a in actions] == [("legacy.echo", {"type": "object"})]
    assert all(c.equal for c in await verify(js, pool, RegistryProjection()))


async def test_a_module_registered_under_v1_is_not_registered_again(nc: NATS, hub: Hub) -> None:
    """Upcasting is what makes the v2 digest of an unchanged manifest equal to its v1 digest."""
    module_id = unique("legacy")
    manifest = _v1_manifest(module_id)
    js = nc.jetstream()
    ack = await js.publish(
        f"registry.{module_id}.registered", _v1_event("module.registered", manifest, "2024-01-02T03:04:05Z")
    )
    await hub.registry.wait_for(ack.seq)
    appended = await Registrar(js, hub.registry).announce(msgspec.convert(manifest, ModuleManifest))
    assert appended is False
    assert (await js.stream_info("REGISTRY")).state.last_seq == ack.seq


async def test_the_migration_prefixes_digests_folded_from_v1(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, sql in migrations():
            if version < "003":
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
        await conn.execute(
            "INSERT INTO registry_modules VALUES ('m', 'M', '1.0.0', '', $1, now(), now(), 1)", "ab" * 32
        )
        assert "004_registry_digest_v2" in await migrate(conn)
        assert await conn.fetchval("SELECT digest FROM registry_modules") == "sha256:" + "ab" * 32
    finally:
        await conn.close()
