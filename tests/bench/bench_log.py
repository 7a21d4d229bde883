"""Benchmark of the log as a product: rebuild and replay throughput against the raw JetStream floor.

    .venv/bin/python tests/bench/bench_log.py [--events 1000000] [--modules 1000]

It starts an embedded nats-server and PostgreSQL in a temporary folder, appends ``--events``
``module.updated`` events (v2, one small capability each) for ``--modules`` modules to the
REGISTRY stream with pipelined ``publish_async``, then measures in the same run:

    (a) the floor: a pull consumer with ``AckPolicy.NONE`` fetching every event in batches of
        256 and of 1024 and doing nothing with them — what any reader of the stream pays;
    (b) ``rebuild`` of the registry projection: the fold into a shadow schema (decode every
        event, keep each module's last manifest per 16,384-event chunk, write it), the
        catch-up and the atomic swap;
    (c) ``dai replay REGISTRY`` to JSON lines (decode, upcast, encode, write to /dev/null).

and prints events/s for each and the ratio (b) / best (a); the target is >= 0.8.

What it measures, honestly: the registry projection is the only projection there is, and its
read model folds many events into few rows (1,000 modules), so (b) is bound by reading and
decoding the log, not by PostgreSQL writes. A projection that writes one row per event is
bound by PostgreSQL instead (DESIGN.md: ~86k rows/s with ``executemany``). Every figure comes
from one process on uvloop; the machine drifts, so compare the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import nats
import uvloop
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from democratic_ai.contracts import ensure_streams
from democratic_ai.contracts.registry_events import CapabilitySpec, ModuleManifest, ModuleUpdated, encode_event
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.postgres_server import PostgresServer
from democratic_ai.ops.replay import ReplayOptions, plan_replay, replay
from democratic_ai.projections import RegistryProjection, rebuild
from democratic_ai.schemas import create_pool, migrate

_PROGRESS_EVERY = 100_000


async def publish(js: JetStreamContext, events: int, modules: int) -> float:
    """Append the events; returns events/s. Each event is a new version of one module's manifest."""
    failures: list[BaseException] = []

    def check(future: asyncio.Future[object]) -> None:
        if not future.cancelled() and future.exception() is not None:
            failures.append(future.exception())  # type: ignore[arg-type]

    now = datetime.now(UTC)
    started = time.perf_counter()
    for n in range(events):
        module_id = f"bench-{n % modules:05d}"
        manifest = ModuleManifest(
            module_id=module_id,
            version=f"1.0.{n // modules}",
            capabilities=(CapabilitySpec(action="bench.op", input_schema={"type": "object"}),),
        )
        event = ModuleUpdated(manifest=manifest, digest=manifest.digest(), at=now)
        future = await js.publish_async(f"registry.{module_id}.updated", encode_event(event))
        future.add_done_callback(check)
        if (n + 1) % _PROGRESS_EVERY == 0:
            print(f"  published {n + 1:,}", flush=True)
    await js.publish_async_completed()
    if failures:
        raise RuntimeError(f"{len(failures)} publishes failed, e.g. {failures[0]!r}")
    return events / (time.perf_counter() - started)


async def fetch_floor(js: JetStreamContext, events: int, batch: int) -> float:
    """Read every event with the cheapest consumer there is; returns events/s."""
    info = await js.add_consumer(
        "REGISTRY",
        ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
            filter_subject="registry.>",
            mem_storage=True,
        ),
    )
    subscription = await js.pull_subscribe_bind(consumer=info.name, stream="REGISTRY")
    seen = 0
    started = time.perf_counter()
    try:
        while seen < events:
            seen += len(await subscription.fetch(batch, timeout=5.0))
    finally:
        elapsed = time.perf_counter() - started
        await subscription.unsubscribe()
        await js.delete_consumer("REGISTRY", info.name)
    return seen / elapsed


async def run(nats_url: str, database_url: str, events: int, modules: int) -> dict[str, float]:
    nc = await nats.connect(nats_url, name="bench-log")
    js = nc.jetstream()
    await ensure_streams(js)
    pool = await create_pool(database_url, max_size=2)
    async with pool.acquire() as conn:
        await migrate(conn)
    figures: dict[str, float] = {}
    try:
        print(f"publishing {events:,} events for {modules:,} modules…", flush=True)
        figures["publish"] = await publish(js, events, modules)
        stored = (await js.stream_info("REGISTRY")).state.messages
        if stored != events:
            raise RuntimeError(f"REGISTRY holds {stored} events, expected {events}")

        figures["floor_fetch_256"] = await fetch_floor(js, events, 256)
        figures["floor_fetch_1024"] = await fetch_floor(js, events, 1024)

        started = time.perf_counter()
        folded = await rebuild(js, pool, RegistryProjection())
        figures["rebuild"] = folded / (time.perf_counter() - started)
        async with pool.acquire() as conn:
            rows = await conn.fetchval("SELECT count(*) FROM registry_modules")
        if folded != events or rows != modules:
            raise RuntimeError(f"rebuild folded {folded} events into {rows} modules")
        print(f"  rebuilt {rows} modules from {folded:,} events", flush=True)

        # The floor again, after the rebuild: a drifting machine shows here.
        figures["floor_fetch_1024_after"] = await fetch_floor(js, events, 1024)

        plan = await plan_replay(js, ReplayOptions(stream="REGISTRY"))
        with open(os.devnull, "wb") as sink:
            started = time.perf_counter()
            written = await replay(js, plan, sink)
            figures["replay_jsonl"] = written / (time.perf_counter() - started)
        if written != events:
            raise RuntimeError(f"replay wrote {written} events")
    finally:
        await pool.close()
        await nc.close()
    floor = max(figures["floor_fetch_256"], figures["floor_fetch_1024"], figures["floor_fetch_1024_after"])
    figures["rebuild_over_floor"] = figures["rebuild"] / floor
    figures["replay_over_floor"] = figures["replay_jsonl"] / floor
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--modules", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dai-bench-log-", ignore_cleanup_errors=True) as tmp:
        nats_server, postgres = NatsServer(Path(tmp), port=0), PostgresServer(Path(tmp))
        with nats_server, postgres:
            database_url = postgres.ensure_database("bench")
            figures = uvloop.run(run(nats_server.url, database_url, args.events, args.modules))
    print()
    print(f"events                         {args.events:>12,}  ({args.modules:,} modules)")
    print(f"publish (publish_async)        {figures['publish']:>12,.0f} events/s")
    print(f"(a) floor: fetch 256, ack none {figures['floor_fetch_256']:>12,.0f} events/s")
    print(
        f"(a) floor: fetch 1024          {figures['floor_fetch_1024']:>12,.0f} events/s"
        f"  ({figures['floor_fetch_1024_after']:,.0f} after the rebuild)"
    )
    print(
        f"(b) rebuild registry           {figures['rebuild']:>12,.0f} events/s"
        f"  = {figures['rebuild_over_floor']:.2f} x best floor (target >= 0.80)"
    )
    print(
        f"(c) replay to JSONL            {figures['replay_jsonl']:>12,.0f} events/s"
        f"  = {figures['replay_over_floor']:.2f} x best floor"
    )
    print(json.dumps({k: round(v, 3) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
