"""Benchmark: ``tools/call`` of a no-op capability through ``/mcp`` against a plain invoke of it.

    .venv/bin/python tests/bench/bench_mcp.py [--seconds 5] [--concurrency 32]

From one run, on one gateway and one module, it prints calls/s and p50/p99 latency of

    (i) ``POST /v1/capabilities/bench.noop/invoke``
    (m) ``POST /mcp`` with a 2026-07-28 ``tools/call`` of ``bench.noop`` (a stateless request,
        answered with one JSON-RPC response)

and the ratio m/i (target >= 0.8), then the CPU time per call of each process. The processes
are laid out as in ``bench_call_path.py`` (whose module and helpers this reuses): the gateway
and the embedded servers here, the module and the HTTP load generator in processes of their
own; the load generator is the same aiohttp loop for both, so the ratio compares the gateway's
two paths and not two clients. The bus runs without authorization (the trust boundary costs
both paths alike; ``bench_call_path.py`` measures it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from dataclasses import asdict
from functools import partial
from pathlib import Path

import aiohttp
import asyncpg
import psutil
import uvloop
from aiohttp import web
from bench_call_path import (
    API_KEY_ENV,
    BODY,
    CALL_TIMEOUT,
    CAPABILITY,
    INVOKE_PATH,
    PAYLOAD,
    READY_TIMEOUT,
    Result,
    cpu_seconds,
    drive,
    open_config,
    spawn as spawn_call_path,
    stop_child,
    until_ok,
    with_cpu,
)

from democratic_ai.contracts import ensure_streams
from democratic_ai.contracts.bus import connect
from democratic_ai.hub import Hub
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.postgres_server import PostgresServer
from democratic_ai.schemas import app_dsn, migrate
from democratic_ai.services.gateway import GatewayConfig, create_app
from democratic_ai.services.identity import KeyEncryptionKey, ensure_bootstrap

MODERN = "2026-07-28"
MCP_BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": CAPABILITY,
            "arguments": PAYLOAD,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
).encode()
MCP_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Mcp-Protocol-Version": MODERN,
    "Mcp-Method": "tools/call",
    "Mcp-Name": CAPABILITY,
}
SCENARIOS = {"i": ("(i) POST .../invoke", INVOKE_PATH), "m": ("(m) POST /mcp tools/call", "/mcp")}
ROLES = ("caller", "http", "server", "nats")


async def post(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], mcp: bool) -> None:
    """One call; raises unless it succeeded (for /mcp: a JSON-RPC result that is no tool error)."""
    async with session.post(url, data=body, headers=headers) as response:
        answer = await response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {answer[:200]!r}")
        if mcp:
            document = json.loads(answer)
            if "result" not in document or document["result"].get("isError"):
                raise RuntimeError(f"MCP: {answer[:200]!r}")


def call_of(session: aiohttp.ClientSession, url: str, api_key: str) -> partial[object]:
    mcp = url.endswith("/mcp")
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json", **(MCP_HEADERS if mcp else {})}
    return partial(post, session, url, MCP_BODY if mcp else BODY, headers, mcp)


async def load(url: str, concurrency: int, warmup: float, seconds: float) -> Result:
    """``--load URL``: call ``url`` from ``concurrency`` workers over one connector."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT)) as session:
        print("go", flush=True)  # the parent starts counting CPU time from this line
        return await drive(call_of(session, url, os.environ[API_KEY_ENV]), concurrency, warmup, seconds)


async def measure(base: str, path: str, api_key: str, args: argparse.Namespace, pids: dict[str, int]) -> Result:
    url = base + path
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT)) as session:
        await until_ok(call_of(session, url, api_key), url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).resolve()),
        "--load",
        url,
        "--concurrency",
        str(args.concurrency),
        "--warmup",
        str(args.warmup),
        "--seconds",
        str(args.seconds),
        env={**os.environ, API_KEY_ENV: api_key},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
        spent, out = await asyncio.wait_for(
            asyncio.gather(cpu_seconds({**pids, "caller": proc.pid}, args.warmup, args.seconds), proc.stdout.read()),
            args.warmup + args.seconds + READY_TIMEOUT,
        )
        await proc.wait()
    finally:
        await stop_child(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"the load generator exited with code {proc.returncode}")
    return with_cpu(Result(**json.loads(out)), spent)


async def run(server: NatsServer, database_url: str, args: argparse.Namespace) -> dict[str, Result]:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    nc = await connect(server.bus("operator"), "bench-mcp")
    module = None
    runner = None
    hub = Hub()  # registers the module, so /mcp lists and calls it as a registered tool
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        key = await ensure_bootstrap(js)
        await hub.start(nc)
        module = await spawn_call_path("--serve", "module", env={**os.environ, **server.environment("operator")})
        async with asyncio.timeout(READY_TIMEOUT):
            while "bench" not in hub.registry.digests:
                await asyncio.sleep(0.05)
        gateway = create_app(
            GatewayConfig(
                bus=server.bus("gateway"), database_url=app_dsn(database_url), port=0, kek=KeyEncryptionKey.generate()
            )
        )
        runner = web.AppRunner(gateway, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        nats_pid = next(p.pid for p in psutil.Process().children() if p.name().startswith("nats-server"))
        pids = {"http": os.getpid(), "server": module.pid, "nats": nats_pid}
        results = {}
        for scenario, (name, path) in SCENARIOS.items():
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results[scenario] = await measure(base, path, key, args, pids)
        return results
    finally:
        if runner is not None:
            await runner.cleanup()
        if module is not None:
            await stop_child(module)
        await hub.stop()
        await nc.close()


def report(results: dict[str, Result], args: argparse.Namespace) -> None:
    print(
        f"\n/mcp against invoke, {args.concurrency} calls in flight, {args.seconds:g} s each after"
        f" {args.warmup:g} s warm-up"
    )
    print(f"{'scenario':<32}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for key, (name, _) in SCENARIOS.items():
        r = results[key]
        print(f"{name:<32}{r.rate:>10.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.errors:>8}")
    ratio = results["m"].rate / results["i"].rate
    print(f"{'m/i throughput':<32}{ratio:>10.2f}   target >= 0.80  {'ok' if ratio >= 0.8 else 'MISS'}")
    print("\nCPU µs per call")
    print(f"{'scenario':<32}" + "".join(f"{role:>8}" for role in (*ROLES, "total")))
    for key, (name, _) in SCENARIOS.items():
        cpu = results[key].cpu_us
        print(f"{name:<32}{''.join(f'{cpu.get(role, 0.0):>8.1f}' for role in ROLES)}{sum(cpu.values()):>8.1f}")
    total = {key: sum(results[key].cpu_us.values()) for key in SCENARIOS}
    if all(total.values()):
        print(
            f"{'m/i by total CPU':<32}{total['i'] / total['m']:>10.2f}   (the throughput ratio when the cores"
            " are the limit)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each measurement")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        print(json.dumps(asdict(uvloop.run(load(args.load, args.concurrency, args.warmup, args.seconds)))))
        return
    with tempfile.TemporaryDirectory(prefix="dai-bench-mcp-", ignore_cleanup_errors=True) as tmp:
        nats_server = NatsServer(Path(tmp), port=0, config=open_config(Path(tmp)))
        postgres = PostgresServer(Path(tmp))
        try:
            nats_server.start()
            postgres.start()
            results = uvloop.run(run(nats_server, postgres.ensure_database("bench"), args))
        except KeyboardInterrupt:
            sys.exit("interrupted")
        finally:
            postgres.stop()
            nats_server.stop()
    report(results, args)


if __name__ == "__main__":
    main()
