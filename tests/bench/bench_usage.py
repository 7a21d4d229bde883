"""Benchmark of the usage pipeline: from the USAGE stream to the aggregate read models.

    .venv/bin/python tests/bench/bench_usage.py [--events 200000] [--rounds 3] [--rebuild-events 1000000]

From one run, on the same published messages:

    floor       raw nats-py JetStream pull consumer: fetch(batch), ack every message
    projection  the usage projection (ProjectionRunner + UsageProjection) folding them into
                usage_events and the three aggregates, one transaction per batch

and the ratio projection / floor (target >= 0.8), as medians of interleaved rounds (the
machine is shared; medians of interleaved runs keep one noisy moment from deciding). The floor
with one ack per batch (what the runner does, AckPolicy.ALL) is printed too, for reference. Then the stream is emptied,
``--rebuild-events`` events are published with ``publish_async`` pipelining, and ``rebuild()``
replays them into empty read models: its time is the figure to read.

Events look like a real platform's: 50 tenants with skewed traffic (Pareto: a few make most
calls), 8 capabilities each served by one of 4 modules, the four call metrics of each call,
outcomes mostly success, in time order over the last hours (``--hours``). Both
servers are embedded (a temporary directory), everything runs on uvloop in one process, and
each phase checks its result (message counts, aggregate totals) before it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import uvloop
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from democratic_ai.contracts import ensure_streams
from democratic_ai.contracts.bus import BusOptions, connect
from democratic_ai.contracts.subjects import usage_subject
from democratic_ai.contracts.usage_events import CallMetered, encode_event, message_id
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.postgres_server import PostgresServer
from democratic_ai.projections import Checkpoints, ProjectionRunner, UsageProjection, rebuild
from democratic_ai.schemas import create_pool, migrate

METRICS = (
    ("api_calls", lambda r: 1),
    ("compute_ms", lambda r: r.randint(1, 500)),
    ("bytes_in", lambda r: r.randint(20, 4000)),
    ("bytes_out", lambda r: r.randint(20, 20000)),
)


def events(count: int, seed: int, prefix: str, hours: float) -> list[CallMetered]:
    """``count`` events of calls spread evenly over the last ``hours``, in time order (as a
    live stream carries them)."""
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(hours=hours)
    step = timedelta(hours=hours) / max(1, count // len(METRICS))
    out: list[CallMetered] = []
    call = 0
    while len(out) < count:
        call += 1
        capability = rng.randrange(8)
        common = {
            # Traffic is skewed (a few tenants make most calls), and a capability is served by
            # one module: the shape of a real platform's log, not a uniform worst case.
            "tenant_id": f"tenant-{min(49, int(rng.paretovariate(1.0)) - 1)}",
            "call_id": f"{prefix}-{call}",
            "capability": f"cap.op{capability}",
            "module_id": f"module-{capability % 4}",
            "at": start + step * call,
            "outcome": "success" if rng.random() < 0.95 else "failed",
            "api_key_id": f"key-{rng.randrange(200)}",
        }
        for metric, value in METRICS:
            if len(out) < count:
                out.append(CallMetered(metric=metric, value=value(rng), **common))
    return out


async def publish(js: JetStreamContext, batch: list[CallMetered]) -> float:
    """Publish with pipelining; returns events/s."""
    started = time.perf_counter()
    for event in batch:
        await js.publish_async(
            usage_subject(event.tenant_id, event.metric),
            encode_event(event),
            headers={"Nats-Msg-Id": message_id(event)},
        )
    await js.publish_async_completed()
    return len(batch) / (time.perf_counter() - started)


async def floor(js: JetStreamContext, count: int, batch: int, policy: AckPolicy) -> float:
    """Raw pull consumption of ``count`` messages with acks; returns messages/s."""
    name = f"bench-floor-{policy.value}"
    subscription = await js.pull_subscribe(
        "usage.>",
        durable=name,
        stream="USAGE",
        config=ConsumerConfig(ack_policy=policy, deliver_policy=DeliverPolicy.ALL, max_ack_pending=-1, ack_wait=60),
    )
    seen = 0
    started = time.perf_counter()
    while seen < count:
        messages = await subscription.fetch(batch, timeout=5)
        if policy is AckPolicy.EXPLICIT:
            for msg in messages:
                await msg.ack()
        else:
            await messages[-1].ack()
        seen += len(messages)
    rate = seen / (time.perf_counter() - started)
    await subscription.unsubscribe()
    await js.delete_consumer("USAGE", name)
    return rate


async def checkpoint(pool: asyncpg.Pool) -> int:
    """The lowest of the usage partitions' checkpoints (one worker advances them together)."""
    async with pool.acquire() as conn:
        return min((await Checkpoints(UsageProjection()).read(conn)).values())


async def totals(pool: asyncpg.Pool) -> tuple[int, int]:
    async with pool.acquire() as conn:
        raw = await conn.fetchval("SELECT count(*) FROM usage_events")
        calls = await conn.fetchval("SELECT coalesce(sum(events), 0) FROM usage_daily")
    return raw, calls


async def reset(pool: asyncpg.Pool) -> None:
    """Empty the read models and forget the checkpoints: the next projection starts from scratch."""
    async with pool.acquire() as conn:
        await conn.execute(
            "TRUNCATE usage_events, usage_daily, usage_hourly;"
            " DELETE FROM projection_checkpoints WHERE name = 'usage' OR name LIKE 'usage.p%'"
        )


async def project(js: JetStreamContext, pool: asyncpg.Pool, last: int, batch: int) -> float:
    """Run the usage projection from the start until it has applied ``last``; returns events/s."""
    stop = asyncio.Event()
    runner = ProjectionRunner(js, pool, UsageProjection(), batch=batch)
    started = time.perf_counter()
    task = asyncio.create_task(runner.run(stop))
    while await checkpoint(pool) < last:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    return last / elapsed


async def run(bus: BusOptions, database_url: str, args: argparse.Namespace) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    pool = await create_pool(database_url, max_size=4)
    nc = await connect(bus, "bench-usage")
    try:
        js = nc.jetstream(publish_async_max_pending=8192)
        await ensure_streams(js)
        batch = events(args.events, seed=1, prefix="b", hours=args.hours)
        rate = await publish(js, batch)
        last = (await js.stream_info("USAGE")).state.last_seq
        print(f"published {len(batch)} usage events at {rate:,.0f}/s (publish_async, one message id each)")

        rounds: dict[str, list[float]] = {"explicit": [], "all": [], "projection": []}
        for _ in range(args.rounds):  # interleaved, so a noisy moment hits every measurement alike
            rounds["explicit"].append(await floor(js, len(batch), args.batch, AckPolicy.EXPLICIT))
            rounds["all"].append(await floor(js, len(batch), args.batch, AckPolicy.ALL))
            await reset(pool)
            rounds["projection"].append(await project(js, pool, last, args.batch))
            raw, folded = await totals(pool)
            if raw != len(batch) or folded != len(batch):
                raise SystemExit(
                    f"the read model is wrong: {raw} raw rows, {folded} aggregated, {len(batch)} published"
                )
        explicit, ack_all, projected = (statistics.median(v) for v in rounds.values())
        ratio = projected / explicit
        print(
            f"\nstream -> aggregate read model, {len(batch)} events, fetch({args.batch}),"
            f" median of {args.rounds} interleaved rounds"
        )
        print(f"{'floor: raw pull consume, ack each':<44}{explicit:>10,.0f} events/s")
        print(f"{'(raw pull consume, one ack per batch)':<44}{ack_all:>10,.0f} events/s")
        print(f"{'usage projection into Postgres':<44}{projected:>10,.0f} events/s")
        print(f"{'projection / floor':<44}{ratio:>10.2f}   target >= 0.80  {'ok' if ratio >= 0.8 else 'MISS'}")
        print(f"{'projection / one-ack-per-batch floor':<44}{projected / ack_all:>10.2f}")
        print(
            "rounds (floor / projection): "
            + ", ".join(f"{e:,.0f} / {p:,.0f}" for e, p in zip(rounds["explicit"], rounds["projection"], strict=True))
        )

        if args.rebuild_events:
            await js.purge_stream("USAGE")
            print(f"\npublishing {args.rebuild_events:,} events for the rebuild ...", file=sys.stderr, flush=True)
            rate = await publish(js, events(args.rebuild_events, seed=2, prefix="r", hours=args.hours))
            print(f"published {args.rebuild_events:,} events at {rate:,.0f}/s")
            started = time.perf_counter()
            replayed = await rebuild(js, pool, UsageProjection(), batch=args.batch)
            elapsed = time.perf_counter() - started
            raw, folded = await totals(pool)
            if replayed != args.rebuild_events or raw != replayed or folded != replayed:
                raise SystemExit(f"rebuild is wrong: {replayed} replayed, {raw} raw rows, {folded} aggregated")
            print(
                f"rebuilt the usage read models from {replayed:,} events in {elapsed:.1f} s"
                f" ({replayed / elapsed:,.0f} events/s)"
            )
    finally:
        await nc.close()
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events for the throughput comparison")
    parser.add_argument("--rebuild-events", type=int, default=1_000_000, help="events to rebuild from (0: skip)")
    parser.add_argument(
        "--batch", type=int, default=1024, help="fetch size of the floor and the projection (the runner's default)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each measurement")
    parser.add_argument("--hours", type=float, default=24.0, help="the span of time the events cover")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dai-bench-usage-", ignore_cleanup_errors=True) as tmp:
        nats_server, postgres = NatsServer(Path(tmp), port=0), PostgresServer(Path(tmp))
        try:
            nats_server.start()
            postgres.start()
            uvloop.run(run(nats_server.bus("operator"), postgres.ensure_database("bench"), args))
        except KeyboardInterrupt:
            sys.exit("interrupted")
        finally:
            postgres.stop()
            nats_server.stop()


if __name__ == "__main__":
    main()
