"""Shadow rebuilds swap atomically, verification compares checksums, as-of builds the past apart,
status measures lag."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts.registry_events import (
    CapabilitySpec,
    ModuleManifest,
    ModuleRegistered,
    ModuleUpdated,
    encode_event,
)
from democratic_ai.projections import (
    PROJECTIONS,
    ProjectionRunner,
    RebuildInProgress,
    RegistryProjection,
    projection_status,
    rebuild,
    rebuild_as_of,
    verify,
)

from support.names import unique
from support.projections import caught_up, checkpoint, reached


def _manifest(module_id: str, version: str = "1.0.0") -> ModuleManifest:
    return ModuleManifest(
        module_id=module_id,
        version=version,
        capabilities=(
            CapabilitySpec(action="test.first", input_schema={"type": "object"}),
            CapabilitySpec(action="test.second", output_schema={"type": "string"}),
        ),
    )


async def _publish(nc: NATS, module_id: str, version: str = "1.0.0", *, update: bool = False) -> int:
    """Append a REGISTRY event for ``module_id``; returns its stream sequence."""
    manifest = _manifest(module_id, version)
    kind = ModuleUpdated if update else ModuleRegistered
    event = kind(manifest=manifest, digest=manifest.digest(), at=datetime.now(UTC))
    name = "updated" if update else "registered"
    return (await nc.jetstream().publish(f"registry.{module_id}.{name}", encode_event(event))).seq


async def _publish_many(nc: NATS, count: int) -> list[str]:
    js = nc.jetstream()
    ids = [unique("rb") for _ in range(count)]
    for module_id in ids:
        manifest = _manifest(module_id)
        event = ModuleRegistered(manifest=manifest, digest=manifest.digest(), at=datetime.now(UTC))
        await js.publish_async(f"registry.{module_id}.registered", encode_event(event))
    await js.publish_async_completed()
    return ids


async def _catch_up(nc: NATS, pool: asyncpg.Pool, timeout: float = 30.0) -> None:
    """Run the live registry projection until it has folded the whole stream."""
    target = (await nc.jetstream().stream_info("REGISTRY")).state.last_seq
    stop = asyncio.Event()
    task = asyncio.create_task(ProjectionRunner(nc.jetstream(), pool, RegistryProjection()).run(stop))
    try:
        await reached(pool, "registry", target, timeout)
    finally:
        stop.set()
        await task


async def _rows(pool: asyncpg.Pool, schema: str = "public") -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    async with pool.acquire() as conn:
        modules = await conn.fetch(f"SELECT * FROM {schema}.registry_modules ORDER BY module_id")
        capabilities = await conn.fetch(f"SELECT * FROM {schema}.registry_capabilities ORDER BY module_id, action")
    return modules, capabilities


async def test_readers_see_the_old_complete_model_until_the_swap(nc: NATS, pool: asyncpg.Pool) -> None:
    await _publish_many(nc, 200)
    await _catch_up(nc, pool)
    modules, capabilities = await _rows(pool)
    assert modules and capabilities

    seen: list[tuple[int, int]] = []
    done = asyncio.Event()

    async def reader() -> None:
        async with pool.acquire() as conn:
            while not done.is_set():
                # One statement, one snapshot: both counts come from the same state of the model.
                seen.append(
                    tuple(
                        await conn.fetchrow(
                            "SELECT (SELECT count(*) FROM registry_modules),"
                            " (SELECT count(*) FROM registry_capabilities)"
                        )
                    )
                )
                await asyncio.sleep(0)  # yields to the rebuild between reads (not a wait)

    # Events that arrive during the rebuild are folded by the live runner; the swap must keep them.
    stop = asyncio.Event()
    runner = asyncio.create_task(ProjectionRunner(nc.jetstream(), pool, RegistryProjection(), batch=16).run(stop))
    reading = asyncio.create_task(reader())
    try:
        late = asyncio.create_task(_publish_many(nc, 50))
        replayed = await rebuild(nc.jetstream(), pool, RegistryProjection())
        late_ids = await late
        await caught_up(nc, pool, "registry", timeout=30)
    finally:
        done.set()
        stop.set()
        await asyncio.gather(reading, runner)

    assert replayed >= len(modules)
    assert len(seen) > 10, "the reader did not run alongside the rebuild"
    assert all(m >= len(modules) and c >= len(capabilities) for m, c in seen), "a reader saw a partial model"
    after_modules, after_capabilities = await _rows(pool)
    assert {r["module_id"] for r in after_modules} >= set(late_ids) | {r["module_id"] for r in modules}
    late = set(late_ids)
    assert sum(1 for c in after_capabilities if c["module_id"] in late) == 2 * len(late)
    assert all(c.equal for c in await verify(nc.jetstream(), pool, RegistryProjection()))
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'dai_%'") == 0


async def test_verify_finds_equal_tables_then_the_tampered_one(nc: NATS, pool: asyncpg.Pool) -> None:
    ids = await _publish_many(nc, 20)
    await _catch_up(nc, pool)
    comparisons = await verify(nc.jetstream(), pool, RegistryProjection())
    assert [c.table for c in comparisons] == [
        '"public"."registry_capabilities"',
        '"public"."registry_modules"',
        "projection_dead_letters of registry",
    ]
    assert all(c.equal and c.live.rows > 0 for c in comparisons[:2]) and comparisons[2].equal

    async with pool.acquire() as conn:
        await conn.execute("UPDATE registry_modules SET description = 'tampered' WHERE module_id = $1", ids[0])
    tampered = {c.table: c for c in await verify(nc.jetstream(), pool, RegistryProjection())}
    assert not tampered['"public"."registry_modules"'].equal
    assert tampered['"public"."registry_modules"'].live.rows == tampered['"public"."registry_modules"'].rebuilt.rows
    assert tampered['"public"."registry_capabilities"'].equal


async def test_as_of_builds_the_past_apart_from_the_live_model(nc: NATS, pool: asyncpg.Pool) -> None:
    old, new = unique("past"), unique("future")
    first = await _publish(nc, old, "1.0.0")
    await asyncio.sleep(0.05)  # time passes on both sides of the instant, so that it falls between the events
    instant = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await _publish(nc, old, "2.0.0", update=True)
    await _publish(nc, new)
    await _catch_up(nc, pool)
    live_rows, live_checkpoint = await _rows(pool), await checkpoint(pool, "registry")

    result = await rebuild_as_of(nc.jetstream(), pool, RegistryProjection(), instant)

    assert (result.schema, result.last_sequence) == ("dai_asof_registry", first)
    modules, _ = await _rows(pool, result.schema)
    versions = {r["module_id"]: r["version"] for r in modules}
    assert versions[old] == "1.0.0" and new not in versions
    async with pool.acquire() as conn:
        stopped = await conn.fetchrow("SELECT * FROM dai_asof_registry.checkpoint")
    assert (stopped["projection"], stopped["last_sequence"], stopped["as_of"]) == ("registry", first, instant)
    assert await _rows(pool) == live_rows and await checkpoint(pool, "registry") == live_checkpoint

    before_everything = await rebuild_as_of(
        nc.jetstream(), pool, RegistryProjection(), datetime(2000, 1, 1, tzinfo=UTC)
    )
    assert (before_everything.last_sequence, before_everything.events) == (0, 0)
    assert await _rows(pool, result.schema) == ([], [])


async def test_a_second_build_of_the_same_projection_is_refused(nc: NATS, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1, hashtext('registry'))", 0x646169)
        try:
            with pytest.raises(RebuildInProgress, match="registry"):
                await rebuild(nc.jetstream(), pool, RegistryProjection())
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1, hashtext('registry'))", 0x646169)


@dataclass(frozen=True)
class OneModule:
    """A projection over one module's events: its lag depends on this test alone."""

    name: str
    filter_subject: str
    stream: str = "REGISTRY"
    partitions: None = None
    tables: tuple[str, ...] = ()

    async def apply(self, conn: asyncpg.Connection, events: object) -> None:
        raise NotImplementedError("status never applies events")


async def test_status_counts_lag_in_events_and_stream_seconds(nc: NATS, pool: asyncpg.Pool) -> None:
    module_id = unique("lag")
    projection = OneModule(name=unique("status"), filter_subject=f"registry.{module_id}.>")
    sequences = []
    for version in ("1.0.0", "1.0.1", "1.0.2"):
        sequences.append(await _publish(nc, module_id, version, update=version != "1.0.0"))
        await asyncio.sleep(0.3)  # the events' times apart: the lag in stream seconds is what the test reads
    stored = [(await nc.jetstream().get_msg("REGISTRY", seq)).time for seq in sequences]

    [never] = await projection_status(nc.jetstream(), pool, [projection])
    assert (never.applied, never.stream_last, never.lag_events) == (0, sequences[-1], 3)
    assert never.lag_seconds == pytest.approx((stored[2] - stored[0]).total_seconds(), abs=1e-3)

    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO projection_checkpoints (name, last_sequence) VALUES ($1, $2)", projection.name, sequences[1]
        )
    [behind] = await projection_status(nc.jetstream(), pool, [projection])
    assert (behind.applied, behind.lag_events) == (sequences[1], 1)
    assert behind.lag_seconds == pytest.approx((stored[2] - stored[1]).total_seconds(), abs=1e-3)
    assert behind.lag_seconds >= 0.25

    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE projection_checkpoints SET last_sequence = $2 WHERE name = $1", projection.name, sequences[2]
        )
    [current] = await projection_status(nc.jetstream(), pool, [projection])
    assert (current.lag_events, current.lag_seconds) == (0, 0.0)


async def test_the_projection_commands(
    nc: NATS,
    pool: asyncpg.Pool,
    nats_server: object,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from democratic_ai.ops.cli import main

    ids = await _publish_many(nc, 5)
    await _catch_up(nc, pool)
    for name, value in nats_server.environment("operator").items():  # type: ignore[attr-defined]
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATABASE_URL", database_url)

    async def dai(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = await dai("projections", "status")
    last = (await nc.jetstream().stream_info("REGISTRY")).state.last_seq
    assert code == 0
    assert out.splitlines()[1].split() == ["registry", "REGISTRY", str(last), str(last), "0", "0.000", "0"]

    code, out, _ = await dai("projections", "verify", "registry")
    assert code == 0 and out.splitlines()[-1] == "registry: equal to a rebuild from the log"
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM registry_modules WHERE module_id = $1", ids[0])
    code, out, _ = await dai("projections", "verify", "registry")
    assert code == 1
    assert out.splitlines()[-1] == 'registry: different: "public"."registry_capabilities", "public"."registry_modules"'

    code, out, _ = await dai("projections", "rebuild", "registry")
    assert code == 0 and out.startswith("rebuilt registry from ")
    code, out, _ = await dai("projections", "verify", "registry")
    assert code == 0

    code, out, _ = await dai("projections", "rebuild", "registry", "--as-of", "2000-01-01")
    assert code == 0
    assert "as of 2000-01-01T00:00:00+00:00: 0 events up to REGISTRY sequence 0, in schema dai_asof_registry" in out

    code, _, err = await dai("projections", "rebuild", "nope")
    known = ", ".join(sorted(PROJECTIONS))
    assert (code, err.strip()) == (2, f"dai: unknown projection 'nope'; known: {known}")
