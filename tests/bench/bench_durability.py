"""What ``sync_interval: always`` costs: appends with and without an fsync per write, on one
server and on a three-node cluster (R3), in one run.

    .venv/bin/python tests/bench/bench_durability.py [--messages 20000] [--rounds 2]

For each topology it starts the servers three times — fsyncing every write (``always``, what a
cluster runs), every second (``1s``, what one server runs) and every two minutes (``2m``, the
server's default) — and measures, with the platform's streams declared by ``ensure_streams``:

    (u) acknowledged appends to USAGE, pipelined (``publish_async``, as the usage publisher
        sends): appends/s;
    (s) acknowledged appends to BILLING one at a time (as a command waits for its event): p50
        and p99 latency;
    (m) MCP records published without an ack (as the router and modules do), until the stream
        holds them all: records/s.

It prints each figure and the ratios always / 2m and 1s / 2m. The absolute figures depend on
the disk (fsync) far more than on the CPU; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvloop

from democratic_ai.contracts import ensure_streams
from democratic_ai.contracts.bus import BusOptions, connect
from democratic_ai.ops.nats_cluster import NatsCluster
from democratic_ai.ops.nats_server import NatsServer

_SYNCS = ("always", "1s", "2m")  # 2m is the server's default
_PAYLOAD = b'{"v":1,"tenant_id":"bench","metric":"api_calls","value":1,"outcome":"success"}' + b" " * 120


@contextmanager
def _servers(topology: str, folder: Path, sync: str) -> Iterator[BusOptions]:
    if topology == "cluster":
        cluster = NatsCluster(folder, sync_interval=sync)
        with cluster:
            yield cluster.bus("operator")
    else:
        server = NatsServer(folder, port=0, sync_interval=sync)
        with server:
            yield server.bus("operator")


async def _measure(bus: BusOptions, replicas: int, messages: int) -> dict[str, float]:
    nc = await connect(bus, "bench-durability")
    try:
        js = nc.jetstream()
        await ensure_streams(js, replicas=replicas)
        started = time.perf_counter()
        for n in range(messages):
            await js.publish_async(f"usage.bench{n % 64}.api_calls", _PAYLOAD)
        await js.publish_async_completed()
        pipelined = messages / (time.perf_counter() - started)

        latencies = []
        for _ in range(min(messages // 10, 2000)):
            sent = time.perf_counter()
            await js.publish("billing.bench.invoice", _PAYLOAD)
            latencies.append(time.perf_counter() - sent)
        latencies.sort()

        before = (await js.stream_info("MCP")).state.messages
        started = time.perf_counter()
        for n in range(messages):
            await nc.publish(f"mcp.req.bench.{n % 64}", _PAYLOAD)
        await nc.flush()
        while (await js.stream_info("MCP")).state.messages < before + messages:
            await asyncio.sleep(0.01)
        records = messages / (time.perf_counter() - started)
    finally:
        await nc.close()
    return {
        "usage appends/s (pipelined)": pipelined,
        "billing append p50 ms": statistics.median(latencies) * 1000,
        "billing append p99 ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "mcp records/s (no ack)": records,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    uvloop.install()
    with tempfile.TemporaryDirectory(prefix="dai-bench-durability-") as tmp:
        root = Path(tmp)
        for topology, replicas in (("single", 1), ("cluster", 3)):
            results: dict[str, list[dict[str, float]]] = {sync: [] for sync in _SYNCS}
            for round_ in range(args.rounds):  # interleaved, so drift hits each alike
                for sync in _SYNCS:
                    with _servers(topology, root / f"{topology}-{sync}-{round_}", sync) as bus:
                        results[sync].append(asyncio.run(_measure(bus, replicas, args.messages)))
            print(f"\n{topology} ({replicas} replica{'s' if replicas > 1 else ''}), medians of {args.rounds} rounds:")
            print(f"  {'':30} " + " ".join(f"{sync:>10}" for sync in _SYNCS) + "   always/2m   1s/2m")
            for figure in results[_SYNCS[0]][0]:
                values = {sync: statistics.median(r[figure] for r in results[sync]) for sync in _SYNCS}
                print(
                    f"  {figure:30} "
                    + " ".join(f"{values[sync]:10.1f}" for sync in _SYNCS)
                    + f"   {values['always'] / values['2m']:9.2f}   {values['1s'] / values['2m']:5.2f}"
                )


if __name__ == "__main__":
    main()
