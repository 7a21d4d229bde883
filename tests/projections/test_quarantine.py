"""A projection never dies on an event: forged or unfoldable events are quarantined, shown, retried."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.identity_events import TenantCreated, encode_event
from democratic_ai.projections import PROJECTIONS, ProjectionRunner, projection_status, rebuild, retry, verify

from support.names import unique
from support.projections import caught_up, reached

_STREAM = "POISONTEST"


class ValueEvent(msgspec.Struct):
    value: int
    label: str = ""


@dataclass
class Values:
    """A test projection: one row per event, in a table whose column types a "fix" can widen."""

    name: str = field(default_factory=lambda: unique("values"))
    stream: str = _STREAM
    filter_subject: str = field(default_factory=lambda: f"poisontest.{uuid.uuid4().hex[:10]}")
    partitions: None = None
    tables: tuple[str, ...] = ("poison_values",)

    async def apply(self, conn: asyncpg.Connection, events: object) -> None:
        rows = []
        for msg in events:  # type: ignore[attr-defined]
            event = msgspec.json.decode(msg.data, type=ValueEvent)
            rows.append((msg.metadata.sequence.stream, event.value, event.label))
        await conn.executemany(
            "INSERT INTO poison_values (sequence, value, label) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", rows
        )


async def _values_stream(nc: NATS, pool: asyncpg.Pool) -> None:
    await nc.jetstream().add_stream(StreamConfig(name=_STREAM, subjects=["poisontest.>"]))
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE poison_values (sequence bigint PRIMARY KEY, value integer NOT NULL, label text NOT NULL)"
        )


async def _dead_letters(pool: asyncpg.Pool, name: str) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch("SELECT * FROM projection_dead_letters WHERE projection = $1 ORDER BY sequence", name)


async def _run_until(nc: NATS, pool: asyncpg.Pool, projection: Values, target: int) -> ProjectionRunner:
    runner = ProjectionRunner(nc.jetstream(), pool, projection, batch=256)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await reached(pool, projection.name, target)
    finally:
        stop.set()
        await task
    return runner


async def test_bad_events_are_quarantined_and_retried_after_a_fix(
    nc: NATS, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    await _values_stream(nc, pool)
    projection = Values()
    js = nc.jetstream()
    payloads = [
        b'{"value": 1}',
        b'{"value": 1099511627776}',  # 2**40: not an integer column's (asyncpg refuses it)
        b'{"value": 3, "label": "a\\u0000b"}',  # NUL: PostgreSQL refuses it
        b"{not json",
        b'{"value": 5}',
    ]
    sequences = [(await js.publish(projection.filter_subject, p)).seq for p in payloads]

    runner = await _run_until(nc, pool, projection, sequences[-1])

    # One batch: everything but the three bad events is folded, and the projection is current.
    async with pool.acquire() as conn:
        assert [r["value"] for r in await conn.fetch("SELECT value FROM poison_values ORDER BY sequence")] == [1, 5]
    letters = await _dead_letters(pool, projection.name)
    assert [r["sequence"] for r in letters] == sequences[1:4]
    assert [r["payload"] for r in letters] == payloads[1:4]
    assert {r["stream"] for r in letters} == {_STREAM} and {r["subject"] for r in letters} == {
        projection.filter_subject
    }
    assert "DataError" in letters[0]["error"] and "int32" in letters[0]["error"]
    assert "CharacterNotInRepertoire" in letters[1]["error"]
    assert "DecodeError" in letters[2]["error"]
    assert runner.quarantined == 3
    quarantine_logs = [r for r in caplog.records if "quarantined" in r.getMessage()]
    assert len(quarantine_logs) == 3 and all(r.levelname == "ERROR" for r in quarantine_logs)
    assert f"dai projections retry {projection.name}" in quarantine_logs[0].getMessage()
    [status] = await projection_status(js, pool, [projection])
    assert (status.applied, status.lag_events, status.quarantined) == (sequences[-1], 0, 3)

    # The fix: a migration widens the column. Retry applies the event that now fits, keeps the others.
    async with pool.acquire() as conn:
        await conn.execute("ALTER TABLE poison_values ALTER COLUMN value TYPE bigint")
    result = await retry(pool, projection)
    assert (result.applied, result.failed) == (1, 2)
    async with pool.acquire() as conn:
        assert [r["value"] for r in await conn.fetch("SELECT value FROM poison_values ORDER BY sequence")] == [
            1,
            2**40,
            5,
        ]
    letters = await _dead_letters(pool, projection.name)
    assert [(r["sequence"], r["attempts"]) for r in letters] == [(sequences[2], 2), (sequences[3], 2)]

    # After the retry the live model holds an event a rebuild would too, and quarantines the same others.
    comparisons = await verify(js, pool, projection)
    assert [c.equal for c in comparisons] == [True, True], comparisons
    assert comparisons[-1].table == f"projection_dead_letters of {projection.name}" and comparisons[-1].live.rows == 2
    async with pool.acquire() as conn:  # a dead letter removed by hand: verify says so
        await conn.execute(
            "DELETE FROM projection_dead_letters WHERE projection = $1 AND sequence = $2", projection.name, sequences[3]
        )
    assert [c.equal for c in await verify(js, pool, projection)] == [True, False]

    # A rebuild folds the log into a shadow with the same quarantine and swaps the dead letters too.
    await rebuild(js, pool, projection)
    letters = await _dead_letters(pool, projection.name)
    assert [(r["sequence"], r["attempts"]) for r in letters] == [(sequences[2], 1), (sequences[3], 1)]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM poison_values") == 3


async def test_a_lost_database_connection_is_not_blamed_on_the_event(nc: NATS, pool: asyncpg.Pool) -> None:
    await _values_stream(nc, pool)

    class Disconnecting(Values):
        async def apply(self, conn: asyncpg.Connection, events: object) -> None:
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    projection = Disconnecting()
    js = nc.jetstream()
    await js.publish(projection.filter_subject, b'{"value": 1}')
    subscription = await js.pull_subscribe(projection.filter_subject, stream=_STREAM)
    [msg] = await subscription.fetch(1, timeout=5)
    runner = ProjectionRunner(js, pool, projection)
    with pytest.raises(asyncpg.ConnectionDoesNotExistError):
        await runner.apply([msg])
    assert await _dead_letters(pool, projection.name) == []
    async with pool.acquire() as conn:
        assert await conn.fetchval(
            "SELECT last_sequence FROM projection_checkpoints WHERE name = $1", projection.name
        ) in (None, 0)
    await subscription.unsubscribe()


@pytest.fixture
async def forged(nc: NATS) -> tuple[str, dict[str, int]]:
    """Forged events of a tenant of their own, published straight onto IDENTITY and USAGE (as a
    client with the bus' publish rights could), then a valid event after them; purged afterwards."""
    tenant = unique("forged")
    js = nc.jetstream()
    at = datetime.now(UTC).isoformat()
    meta = {"at": at, "actor": "system", "ip": "", "user_agent": ""}
    sequences = {
        "identity_not_json": (await js.publish(f"iam.{tenant}.api_key.a", b"\x00not json")).seq,
        "identity_overflow": (
            await js.publish(
                f"iam.{tenant}.api_key.b",
                msgspec.json.encode(
                    {
                        "type": "api_key.issued",
                        "tenant_id": tenant,
                        "meta": meta,
                        "key_id": "b",
                        "prefix": "p",
                        "sha256": "s",
                        "role": "user",
                        "rate_limit": 123456789012345678901234567890,
                    }
                ),
            )
        ).seq,
        "usage_no_call_id": (
            await js.publish(
                f"usage.{tenant}.api_calls",
                msgspec.json.encode(
                    {
                        "type": "usage.call",
                        "tenant_id": tenant,
                        "metric": "api_calls",
                        "value": 1,
                        "at": at,
                        "capability": "x.y",
                    }
                ),
            )
        ).seq,
        "usage_nul": (
            await js.publish(
                f"usage.{tenant}.api_calls",
                msgspec.json.encode(
                    {
                        "type": "usage.call",
                        "tenant_id": tenant,
                        "metric": "api_calls",
                        "value": 1,
                        "at": at,
                        "call_id": unique("call"),
                        "capability": "x\x00y",
                    }
                ),
            )
        ).seq,
        "usage_huge": (
            await js.publish(
                f"usage.{tenant}.api_calls",
                msgspec.json.encode(
                    {
                        "type": "usage.call",
                        "tenant_id": tenant,
                        "metric": "api_calls",
                        "value": 2**63,
                        "at": at,
                        "call_id": unique("call"),
                        "capability": "x.y",
                    }
                ),
            )
        ).seq,
        "usage_no_user_id": (
            await js.publish(
                f"usage.{tenant}.api_calls",
                msgspec.json.encode(
                    {
                        "type": "usage.call",
                        "tenant_id": tenant,
                        "metric": "api_calls",
                        "value": 1,
                        "at": at,
                        "call_id": unique("call"),
                        "capability": "x.y",
                    }
                ),
            )
        ).seq,
        "identity_valid": (
            await js.publish(
                f"iam.{tenant}.tenant.{tenant}",
                encode_event(
                    TenantCreated(tenant_id=tenant, meta=Meta(at=datetime.now(UTC)), name="after the forged ones")
                ),
            )
        ).seq,
    }
    yield tenant, sequences
    await js.purge_stream("IDENTITY", subject=f"iam.{tenant}.>")
    await js.purge_stream("USAGE", subject=f"usage.{tenant}.>")


async def test_forged_events_are_quarantined_and_the_projections_stay_current(
    nc: NATS,
    pool: asyncpg.Pool,
    projections: None,
    forged: tuple[str, dict[str, int]],
    nats_server: object,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tenant, sequences = forged
    await caught_up(nc, pool, "identity")
    await caught_up(nc, pool, "usage")

    identity = await _dead_letters(pool, "identity")
    usage = await _dead_letters(pool, "usage")
    assert {sequences["identity_not_json"], sequences["identity_overflow"]} <= {r["sequence"] for r in identity}
    assert {sequences[k] for k in ("usage_no_call_id", "usage_nul", "usage_huge")} <= {r["sequence"] for r in usage}
    assert sequences["usage_no_user_id"] not in {r["sequence"] for r in usage}
    async with pool.acquire() as conn:
        # The events after the forged ones are folded: the projections went on.
        assert await conn.fetchval("SELECT name FROM tenants WHERE tenant_id = $1", tenant) == "after the forged ones"
        assert await conn.fetchval("SELECT count(*) FROM api_keys WHERE tenant_id = $1", tenant) == 0
        # A usage event without user_id is valid (the field has a default) and is stored with it.
        assert await conn.fetchval("SELECT user_id FROM usage_events WHERE tenant_id = $1", tenant) == ""

    statuses = {s.name: s for s in await projection_status(nc.jetstream(), pool, PROJECTIONS.values())}
    assert statuses["identity"].quarantined == len(identity) >= 2
    assert statuses["usage"].quarantined == len(usage) >= 3

    # The commands the README documents for an operator.
    from democratic_ai.ops.cli import main

    for name, value in nats_server.environment("operator").items():  # type: ignore[attr-defined]
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATABASE_URL", database_url)

    async def dai(*argv: str) -> tuple[int, str]:
        code = await asyncio.to_thread(main, list(argv))
        return code, capsys.readouterr().out

    code, out = await dai("projections", "status")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:5]}
    assert code == 0 and out.splitlines()[0].split()[-1] == "QUARANTINED"
    assert rows["identity"][-1] == str(len(identity)) and rows["usage"][-1] == str(len(usage))
    assert "dai projections retry NAME" in out.splitlines()[-1]

    code, out = await dai("projections", "retry", "identity")
    assert code == 1
    assert (
        out.strip()
        == f"identity: 0 quarantined events applied, {len(identity)} still failing (see projection_dead_letters.error)"
    )
    assert len(await _dead_letters(pool, "identity")) == len(identity)

    code, _ = await dai("projections", "retry", "nope")
    assert code == 2


def test_a_stored_message_looks_like_the_message_projections_apply() -> None:
    from democratic_ai.projections.quarantine import stored_message

    msg: Msg = stored_message("IDENTITY", 42, "iam.t.tenant.t", b"{}")
    assert (msg.subject, msg.data, msg.metadata.sequence.stream, msg.metadata.stream) == (
        "iam.t.tenant.t",
        b"{}",
        42,
        "IDENTITY",
    )


async def test_the_gateway_role_cannot_read_dead_letters(pool: asyncpg.Pool, database_url: str) -> None:
    """Quarantined payloads are every tenant's events: for operators, not for the gateway's role."""
    from democratic_ai.schemas import app_dsn

    conn = await asyncpg.connect(app_dsn(database_url))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM projection_dead_letters")
        assert await conn.fetchval("SELECT count(*) FROM projection_checkpoints") >= 0  # other reads still work
    finally:
        await conn.close()


async def test_status_survives_a_purged_last_message(nc: NATS, pool: asyncpg.Pool) -> None:
    """A purge keeps the stream's last sequence but removes its message: status must not fail."""
    await _values_stream(nc, pool)
    projection = Values()
    js = nc.jetstream()
    await js.publish(projection.filter_subject, b'{"value": 1}')
    last = (await js.publish(f"{projection.filter_subject}.gone", b'{"value": 2}')).seq
    await js.purge_stream(_STREAM, subject=f"{projection.filter_subject}.gone")
    [status] = await projection_status(js, pool, [projection])
    assert (status.stream_last, status.lag_events, status.quarantined) == (last, 1, 0)
