"""The usage projection as N workers: each folds its partitions' tenants, in order, with a
checkpoint per partition; together they equal one worker; a killed worker resumes; changing N
keeps totals exact; events stored before the stream was partitioned are folded once."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from democratic_ai.contracts.bus import connect
from democratic_ai.contracts.partitions import USAGE_PARTITIONS
from democratic_ai.contracts.streams import STREAMS, USAGE_STREAM, ensure_streams
from democratic_ai.contracts.usage_events import Outcome, decode_usage_event
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import free_port
from democratic_ai.projections import (
    Checkpoints,
    ProjectionRunner,
    Share,
    UsageProjection,
    projection_status,
    verify,
)
from democratic_ai.services.billing import PostgresUsageTotals

from support.names import unique
from support.paths import REPO
from support.projections import caught_up
from support.readme import run_script, section_scripts
from support.usage import call_events, expected_totals, publish_usage, usage_snapshot, usage_totals
from support.waiting import eventually

TABLES = ("usage_events", "usage_daily", "usage_hourly")


class Recording(UsageProjection):
    """The usage projection, noting every event it folds: (stream sequence, tenant)."""

    def __init__(self) -> None:
        self.folded: list[tuple[int, str]] = []

    async def apply(self, conn: asyncpg.Connection, events: Sequence[Msg]) -> None:
        await super().apply(conn, events)
        self.folded += [(m.metadata.sequence.stream, decode_usage_event(m.data).tenant_id) for m in events]


async def _start_at_stream_end(nc: NATS, pool: asyncpg.Pool) -> int:
    """The usage projection of this test's database starts where the session's stream ends
    (the pre-partition checkpoint row, which every partition's row starts from)."""
    end = (await nc.jetstream().stream_info(USAGE_STREAM)).state.last_seq
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO projection_checkpoints (name, last_sequence) VALUES ('usage', $1)"
            " ON CONFLICT (name) DO UPDATE SET last_sequence = excluded.last_sequence",
            end,
        )
    return end


@asynccontextmanager
async def _workers(
    nc: NATS, pool: asyncpg.Pool, count: int, only: Sequence[int] | None = None
) -> AsyncIterator[list[ProjectionRunner]]:
    """``count`` usage workers in-process (or only the ``only`` ones of them), stopped on exit."""
    stop = asyncio.Event()
    runners = [
        ProjectionRunner(nc.jetstream(), pool, Recording(), batch=64, share=Share(count, i))
        for i in (range(count) if only is None else only)
    ]
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    try:
        yield runners
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def _tenants_per_partition(per_partition: int) -> list[str]:
    """Tenant ids covering every partition ``per_partition`` times."""
    found: dict[int, list[str]] = {p: [] for p in range(USAGE_PARTITIONS.count)}
    while any(len(t) < per_partition for t in found.values()):
        tenant = unique("part")
        found[USAGE_PARTITIONS.of_key(tenant)].append(tenant)
    return [t for tenants in found.values() for t in tenants[:per_partition]]


async def _read_model(pool: asyncpg.Pool, tenants: Sequence[str]) -> dict[str, dict[str, list[tuple]]]:
    return {tenant: await usage_snapshot(pool, tenant) for tenant in tenants}


async def test_the_stream_appends_the_partition_the_scheme_computes(nc: NATS) -> None:
    js = nc.jetstream()
    for tenant in _tenants_per_partition(1):
        ack = await js.publish(f"usage.{tenant}.api_calls", b"{}")
        stored = await js.get_msg(USAGE_STREAM, ack.seq)
        assert stored.subject == f"usage.{tenant}.api_calls.{USAGE_PARTITIONS.of_key(tenant)}"
        assert USAGE_PARTITIONS.of_subject(stored.subject) == USAGE_PARTITIONS.of_key(tenant)
        await js.purge_stream(USAGE_STREAM, subject=f"usage.{tenant}.>")


async def test_two_workers_fold_disjoint_tenants_in_order_and_equal_one_worker(nc: NATS, pool: asyncpg.Pool) -> None:
    start = await _start_at_stream_end(nc, pool)
    tenants = _tenants_per_partition(2)
    events = [e for tenant in tenants for e in call_events(tenant, 20)]
    last = await publish_usage(nc, sorted(events, key=lambda e: e.call_id))  # the tenants interleaved
    async with _workers(nc, pool, 2) as runners:
        await caught_up(nc, pool, "usage", timeout=30)
    folded = [r.projection.folded for r in runners]  # type: ignore[attr-defined]
    mine = [{tenant for _, tenant in f} for f in folded]
    assert mine[0] and mine[1] and not mine[0] & mine[1]
    assert mine[0] | mine[1] == set(tenants)
    for runner, tenants_of in zip(runners, mine, strict=True):
        assert {USAGE_PARTITIONS.of_key(t) for t in tenants_of} <= set(runner.checkpoints.partitions)
    for f in folded:
        for tenant in {t for _, t in f}:
            sequences = [s for s, t in f if t == tenant]
            assert sequences == sorted(sequences) and len(sequences) == len(set(sequences))
    assert sum(len(f) for f in folded) == len(events)  # each event once
    two = await _read_model(pool, tenants)
    async with pool.acquire() as conn:
        positions = await Checkpoints(UsageProjection()).read(conn)
    assert len(positions) == USAGE_PARTITIONS.count and max(positions.values()) == last

    # The same events folded by one worker, in the same database from the same start.
    async with pool.acquire() as conn:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)}")
        await conn.execute("DELETE FROM projection_checkpoints WHERE name LIKE 'usage.p%'")
    assert await _start_at_stream_end(nc, pool) == last
    async with pool.acquire() as conn:
        await conn.execute("UPDATE projection_checkpoints SET last_sequence = $1 WHERE name = 'usage'", start)
    async with _workers(nc, pool, 1) as (single,):
        await caught_up(nc, pool, "usage", timeout=30)
    assert len(single.projection.folded) == len(events)  # type: ignore[attr-defined]
    assert await _read_model(pool, tenants) == two
    for tenant in tenants:
        assert await usage_totals(pool, tenant) == expected_totals([e for e in events if e.tenant_id == tenant])


async def test_changing_from_two_workers_to_three_keeps_totals_exact(nc: NATS, pool: asyncpg.Pool) -> None:
    await _start_at_stream_end(nc, pool)
    tenants = _tenants_per_partition(1)
    first = [e for tenant in tenants for e in call_events(tenant, 10)]
    await publish_usage(nc, first)
    # Only the first of two workers runs: its (even) partitions move on, the odd ones stay behind.
    async with _workers(nc, pool, 2, only=[0]) as (even,):
        targets = await even.checkpoints.targets(nc.jetstream())

        await eventually(lambda: _reached(pool, even, targets), "worker 0 of 2 to fold its partitions", timeout=30)
    statuses = {s.name: s for s in (await projection_status(nc.jetstream(), pool, [UsageProjection()]))[0].partitions}
    assert all(statuses[f"usage.p{p:02d}"].lag_events == 0 for p in range(0, 16, 2))
    odd = {p: statuses[f"usage.p{p:02d}"].lag_events for p in range(1, 16, 2)}
    assert odd == dict.fromkeys(range(1, 16, 2), 20), odd  # 10 calls, 2 metrics

    second = [e for tenant in tenants for e in call_events(tenant, 10, start=first[0].at.replace(year=2030))]
    await publish_usage(nc, second)
    async with _workers(nc, pool, 3) as runners:
        await caught_up(nc, pool, "usage", timeout=30)
    assert sorted(p for r in runners for p in r.checkpoints.partitions) == list(range(USAGE_PARTITIONS.count))
    assert sum(len(r.projection.folded) for r in runners) == len(first) // 2 + len(second)  # type: ignore[attr-defined]
    for tenant in tenants:
        mine = [e for e in first + second if e.tenant_id == tenant]
        assert await usage_totals(pool, tenant) == expected_totals(mine)
        assert len((await usage_snapshot(pool, tenant))["raw"]) == len(mine)
    status = (await projection_status(nc.jetstream(), pool, [UsageProjection()]))[0]
    assert status.lag_events == 0 and len(status.partitions) == USAGE_PARTITIONS.count


@pytest.mark.slow
async def test_a_killed_worker_resumes_from_its_partitions_checkpoints(
    nc: NATS, pool: asyncpg.Pool, nats_server: object, database_url: str
) -> None:
    await _start_at_stream_end(nc, pool)
    tenants = _tenants_per_partition(4)
    events = [e for tenant in tenants for e in call_events(tenant, 150)]
    await publish_usage(nc, sorted(events, key=lambda e: e.call_id))
    env = {
        **os.environ,
        **nats_server.environment("projections"),  # type: ignore[attr-defined]
        "DATABASE_URL": database_url,
        "DAI_LOG_LEVEL": "WARNING",
        "DAI_PROJECTION_WORKERS": "2",
    }
    second = Checkpoints(UsageProjection(), Share(2, 1))

    async def lowest_of_worker_1() -> int:
        async with pool.acquire() as conn:
            return min((await second.read(conn)).values())

    command = [sys.executable, "-m", "democratic_ai.ops.cli", "projections", "run", "usage"]
    workers = [
        subprocess.Popen([*command, "--worker", "0"], env=env),
        subprocess.Popen(command, env={**env, "DAI_PROJECTION_WORKER": "1"}),
    ]
    try:
        before = await lowest_of_worker_1()
        await eventually(
            lambda: _moved(lowest_of_worker_1, before), "worker 1 to fold a batch", timeout=30, interval=0.005
        )
        workers[1].send_signal(signal.SIGKILL)
        workers[1].wait()
        target = max((await second.targets(nc.jetstream())).values())
        assert await lowest_of_worker_1() < target, "worker 1 finished before it could be killed mid-way"
        workers[1] = subprocess.Popen([*command, "--workers", "2", "--worker", "1"], env=env)
        await caught_up(nc, pool, "usage", timeout=60)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=15)
    assert all(w.returncode == 0 for w in workers)
    for tenant in tenants:
        mine = [e for e in events if e.tenant_id == tenant]
        assert await usage_totals(pool, tenant) == expected_totals(mine)
        assert len((await usage_snapshot(pool, tenant))["raw"]) == len(mine)


async def _reached(pool: asyncpg.Pool, runner: ProjectionRunner, targets: dict[str, int]) -> bool:
    """Whether each of the runner's checkpoints reached its target."""
    async with pool.acquire() as conn:
        done = await runner.checkpoints.read(conn)
    return all(done[name] >= target for name, target in targets.items())


async def _moved(read: object, before: int) -> bool:
    return await read() > before  # type: ignore[operator]


async def test_events_stored_before_the_stream_was_partitioned_are_folded_once(
    tmp_path: Path, pool: asyncpg.Pool
) -> None:
    """A data directory from before the partitions: its USAGE stream has no transform and its
    events no partition token. ``ensure_streams`` adds the transform; partition 0's owner folds
    the old events, the owner of each tenant's partition the new ones."""
    tenants = _tenants_per_partition(1)
    old = [e for tenant in tenants for e in call_events(tenant, 5)]
    new = [e for tenant in tenants for e in call_events(tenant, 5, start=old[0].at.replace(year=2031))]
    unpartitioned = dataclasses.replace(next(s for s in STREAMS if s.name == USAGE_STREAM), subject_transform=None)
    with NatsServer(tmp_path / "bus", port=free_port()) as server:
        nc = await connect(server.bus("operator"), "legacy-test")
        try:
            js = nc.jetstream()
            await js.add_stream(unpartitioned)
            legacy_last = await publish_usage(nc, old)
            assert (await js.get_msg(USAGE_STREAM, legacy_last)).subject.count(".") == 2
            await ensure_streams(js)
            last = await publish_usage(nc, new)
            assert (await js.get_msg(USAGE_STREAM, last)).subject.count(".") == 3
            runners = []
            for worker in (0, 1):  # the second starts once the first has folded its partitions
                async with _workers(nc, pool, 2, only=[worker]) as (runner,):
                    targets = await runner.checkpoints.targets(js)
                    await eventually(
                        functools.partial(_reached, pool, runner, targets), f"worker {worker} to fold", timeout=30
                    )
                    # The partitions stand at different sequences: verify compares each one as far as it is.
                    comparisons = await verify(js, pool, UsageProjection())
                    assert all(c.equal for c in comparisons), comparisons
                    runners.append(runner)
            await caught_up(nc, pool, "usage")
            # A bill waits for the tenant's partition and for partition 0 (its old events).
            tenant = tenants[3]
            bill = await PostgresUsageTotals(pool, js, catch_up_timeout=5).totals(
                tenant, datetime(2000, 1, 1, tzinfo=UTC), datetime(2040, 1, 1, tzinfo=UTC)
            )
            billed = [e for e in old + new if e.tenant_id == tenant and e.outcome == Outcome.SUCCESS]
            assert bill["api_calls"] == sum(e.value for e in billed if e.metric == "api_calls")
        finally:
            await nc.close()
    folded = [r.projection.folded for r in runners]  # type: ignore[attr-defined]
    legacy = set(range(1, legacy_last + 1))
    assert {s for s, _ in folded[0]} >= legacy  # worker 0 owns partition 0, the legacy subjects' partition
    assert not {s for s, _ in folded[1]} & legacy
    assert sum(len(f) for f in folded) == len(old) + len(new)
    for tenant in tenants:
        mine = [e for e in old + new if e.tenant_id == tenant]
        assert await usage_totals(pool, tenant) == expected_totals(mine)


@pytest.mark.slow
async def test_the_readme_workers_fold_the_usage_and_status_shows_their_partitions(
    nc: NATS, pool: asyncpg.Pool, nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    [script] = [b for b in section_scripts(REPO / "README.md", "## The log") if "--workers 2" in b]
    await _start_at_stream_end(nc, pool)
    tenants = _tenants_per_partition(1)
    events = [e for tenant in tenants for e in call_events(tenant, 10)]
    await publish_usage(nc, events)
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)  # the README runs .venv/bin/dai
    env = {
        "PATH": os.environ["PATH"],
        **nats_server.environment("projections"),
        "DATABASE_URL": database_url,
        "DAI_LOG_LEVEL": "WARNING",
    }
    # The README leaves its workers running; here they stop once the usage is folded.
    script += (
        "until .venv/bin/dai projections status --json"
        """ | jq -e '.projections[] | select(.name == "usage") | .lag_events == 0' > /dev/null; do sleep 0.2; done\n"""
        "kill %1 %2\nwait\n"
    )
    out, _ = await run_script(script, cwd=tmp_path, env=env, timeout=120)
    partitions = [line.split()[0] for line in out.splitlines() if line.startswith("usage.p")]
    assert partitions == [f"usage.p{p:02d}" for p in range(USAGE_PARTITIONS.count)]
    assert "PARTITION" in out and any(line.split()[:2] == ["usage", "USAGE"] for line in out.splitlines())
    for tenant in tenants:
        assert await usage_totals(pool, tenant) == expected_totals([e for e in events if e.tenant_id == tenant])
