"""Benchmark of the partitioned usage projection: events/s with 1 worker and with 2 workers.

    .venv/bin/python tests/bench/bench_partitions.py [--events 200000] [--rounds 3] [--tenants 64]

From one run, on the same published usage events, in interleaved rounds (medians reported):

    1 worker    ``dai projections run usage`` folding every partition (the floor)
    2 workers   ``dai projections run usage --workers 2 --worker 0`` and ``--worker 1``

and the ratio 2 workers / 1 worker. Each worker is its own process, as deployed: two workers
in one process would share one Python interpreter. The clock starts when every worker is
ready: the benchmark holds the lock of every partition's checkpoint row while the workers
start (a worker reads its checkpoints under that lock before it follows), and releases it once
each worker waits on it; it stops when every partition's checkpoint has reached the last event
of that partition. Each round checks the read model (raw rows and aggregated events) before it
counts. It also prints the CPU time the workers, PostgreSQL and nats-server spent per event
meanwhile: on a machine whose cores are all busy, throughput goes as 1 / total CPU per event,
so a second worker helps only where cores are idle.

Tenants are uniform by default (``--tenants`` of them): each worker gets about half of the
events. With ``--skewed`` they follow bench_usage.py's Pareto traffic, where one tenant makes
about half of the calls and so one worker folds most of them — partitions split tenants, not a
tenant's events. Both servers are embedded (a temporary directory); the workers run on the same
machine as nats-server and PostgreSQL, so on a machine with few cores they compete for them:
the ratio says what a second worker buys on *this* machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil
import uvloop
from bench_usage import events as skewed_events, publish, totals
from nats.js import JetStreamContext

from democratic_ai.contracts import ensure_streams
from democratic_ai.contracts.bus import connect
from democratic_ai.contracts.partitions import USAGE_PARTITIONS
from democratic_ai.contracts.usage_events import CallMetered
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.postgres_server import PostgresServer, postmaster
from democratic_ai.projections import Checkpoints, UsageProjection
from democratic_ai.schemas import create_pool, migrate

USAGE = UsageProjection()


def uniform_events(count: int, tenants: int, seed: int) -> list[CallMetered]:
    """bench_usage.py's events with the tenant of each call drawn uniformly from ``tenants``."""
    rng = random.Random(seed)
    out, tenant = [], ""
    for event in skewed_events(count, seed=seed, prefix="p", hours=24.0):
        if event.metric == "api_calls":  # the first event of each call
            tenant = f"tenant-{rng.randrange(tenants)}"
        out.append(CallMetered(**{**_fields(event), "tenant_id": tenant}))
    return out


def _fields(event: CallMetered) -> dict[str, object]:
    return {name: getattr(event, name) for name in event.__struct_fields__}


async def reset(pool: asyncpg.Pool) -> None:
    """Empty the read models and every usage checkpoint: the next round folds from scratch."""
    async with pool.acquire() as conn:
        await conn.execute(
            "TRUNCATE usage_events, usage_daily, usage_hourly;"
            " DELETE FROM projection_checkpoints WHERE name = 'usage' OR name LIKE 'usage.p%'"
        )


@dataclass(frozen=True, slots=True)
class Servers:
    nats: psutil.Process
    postmaster: psutil.Process


@dataclass(frozen=True, slots=True)
class Round:
    seconds: float
    cpu: dict[str, float]  # role → CPU seconds spent while folding


def _cpu(processes: dict[int, psutil.Process]) -> dict[int, float]:
    """Each live process's CPU seconds so far (user + system)."""
    seconds = {}
    for pid, process in processes.items():
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[pid] = times.user + times.system
    return seconds


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two readings (a process born in between: all of its own)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def _roles(servers: Servers, workers: list[subprocess.Popen[bytes]]) -> dict[str, dict[int, psutil.Process]]:
    """The workers, nats-server, and PostgreSQL: the postmaster and every backend (the workers' too)."""
    postgres = [servers.postmaster, *servers.postmaster.children(recursive=True)]
    return {
        "workers": {p.pid: psutil.Process(p.pid) for p in workers},
        "postgres": {p.pid: p for p in postgres},
        "nats-server": {servers.nats.pid: servers.nats},
    }


async def _timed(
    pool: asyncpg.Pool, env: dict[str, str], workers: int, targets: dict[str, int], log: Path, servers: Servers
) -> Round:
    """Run ``workers`` worker processes until every partition reached its target: the seconds
    from their release, and the CPU each role spent meanwhile."""
    command = [sys.executable, "-m", "democratic_ai.ops.cli", "projections", "run", "usage"]
    checkpoints = Checkpoints(USAGE)
    async with pool.acquire() as gate:
        transaction = gate.transaction()
        await transaction.start()
        await checkpoints.lock(gate)  # every partition's row: the workers wait for it to start
        with log.open("ab") as output:
            processes = [
                subprocess.Popen(
                    [*command, "--workers", str(workers), "--worker", str(i)],
                    env=env,
                    stdout=output,
                    stderr=output,
                )
                for i in range(workers)
            ]
        try:
            while await _waiting(pool) < workers:
                if any(p.poll() is not None for p in processes):
                    raise SystemExit(f"a worker exited; see {log}")
                await asyncio.sleep(0.02)
            before = {role: _cpu(members) for role, members in _roles(servers, processes).items()}
            started = time.perf_counter()
            await transaction.commit()
            while not await _reached(pool, checkpoints, targets):
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - started
            after = {role: _cpu(members) for role, members in _roles(servers, processes).items()}
            cpu = {role: _spent(before[role], after[role]) for role in after}
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)
    return Round(elapsed, cpu)


async def _waiting(pool: asyncpg.Pool) -> int:
    """Connections waiting on the rows of projection_checkpoints the benchmark holds (on their
    insert, uncommitted, or their lock): the workers, ready."""
    async with pool.acquire() as conn:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE '%projection_checkpoints%'"
        )


async def _reached(pool: asyncpg.Pool, checkpoints: Checkpoints, targets: dict[str, int]) -> bool:
    async with pool.acquire() as conn:
        done = await checkpoints.read(conn)
    return all(done[name] >= target for name, target in targets.items())


async def run(
    nats_server: NatsServer, postmaster: psutil.Process, database_url: str, args: argparse.Namespace, log: Path
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    pool = await create_pool(database_url, max_size=4)
    nc = await connect(nats_server.bus("operator"), "bench-partitions")
    env = {
        **os.environ,
        **nats_server.environment("projections"),
        "DATABASE_URL": database_url,
        "DAI_LOG_LEVEL": "WARNING",
    }
    try:
        js: JetStreamContext = nc.jetstream(publish_async_max_pending=8192)
        await ensure_streams(js)
        batch = (
            skewed_events(args.events, seed=1, prefix="p", hours=24.0)
            if args.skewed
            else uniform_events(args.events, args.tenants, seed=1)
        )
        rate = await publish(js, batch)
        print(
            f"published {len(batch):,} usage events at {rate:,.0f}/s ({'skewed' if args.skewed else 'uniform'} tenants)"
        )
        targets = await Checkpoints(USAGE).targets(js)
        per_partition = _events_per_partition(batch)
        for workers in (1, 2):
            shares = [
                sum(per_partition[p] for p in range(USAGE_PARTITIONS.count) if p % workers == i) for i in range(workers)
            ]
            print(f"{workers} worker(s): events per worker {' / '.join(f'{s:,}' for s in shares)}")

        servers = Servers(psutil.Process(nats_server.process.pid), postmaster)
        rounds: dict[int, list[float]] = {1: [], 2: []}
        cpu: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        for _ in range(args.rounds):  # interleaved, so a noisy moment hits both alike
            for workers in (1, 2):
                await reset(pool)
                measured = await _timed(pool, env, workers, targets, log, servers)
                elapsed = measured.seconds
                cpu[workers].append(measured.cpu)
                raw, folded = await totals(pool)
                if raw != len(batch) or folded != len(batch):
                    raise SystemExit(
                        f"the read model is wrong: {raw} raw rows, {folded} aggregated, {len(batch)} published"
                    )
                rounds[workers].append(len(batch) / elapsed)
        one, two = (statistics.median(rounds[w]) for w in (1, 2))
        print(f"\nstream -> usage read model, {len(batch):,} events, median of {args.rounds} interleaved rounds")
        print(f"{'1 worker (every partition)':<36}{one:>10,.0f} events/s")
        print(f"{'2 workers (8 partitions each)':<36}{two:>10,.0f} events/s")
        print(f"{'2 workers / 1 worker':<36}{two / one:>10.2f}")
        print(f"\nCPU µs per event while folding (medians): {'workers':>10}{'postgres':>10}{'nats':>10}{'total':>10}")
        for workers in (1, 2):
            per = [
                statistics.median(c[role] for c in cpu[workers]) / len(batch) * 1e6
                for role in ("workers", "postgres", "nats-server")
            ]
            label = f"{workers} worker(s)"
            print(f"{label:<41}" + "".join(f"{v:>10,.0f}" for v in per) + f"{sum(per):>10,.0f}")
        print(f"cores on this machine: {os.cpu_count()}")
        print(
            "rounds (1 / 2 workers): "
            + ", ".join(f"{a:,.0f} / {b:,.0f}" for a, b in zip(rounds[1], rounds[2], strict=True))
        )
    finally:
        await nc.close()
        await pool.close()


def _events_per_partition(batch: list[CallMetered]) -> list[int]:
    counts = [0] * USAGE_PARTITIONS.count
    for event in batch:
        counts[USAGE_PARTITIONS.of_key(event.tenant_id)] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events folded in each round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each measurement")
    parser.add_argument("--tenants", type=int, default=64, help="uniform tenants (ignored with --skewed)")
    parser.add_argument("--skewed", action="store_true", help="bench_usage.py's Pareto tenants instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dai-bench-partitions-", ignore_cleanup_errors=True) as tmp:
        nats_server, postgres = NatsServer(Path(tmp), port=0), PostgresServer(Path(tmp))
        log = Path(tmp) / "workers.log"
        try:
            nats_server.start()
            postgres.start()
            database_url = postgres.ensure_database("bench")
            serving = postmaster(postgres.pgdata)
            if serving is None:
                raise SystemExit("PostgreSQL started but no postmaster serves its data directory")
            uvloop.run(run(nats_server, serving, database_url, args, log))
        except KeyboardInterrupt:
            sys.exit("interrupted")
        finally:
            postgres.stop()
            nats_server.stop()


if __name__ == "__main__":
    main()
