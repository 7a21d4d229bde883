"""Benchmark: a capability served by ``Module.start`` against the same served from a FastStream app.

    .venv/bin/python tests/bench/bench_faststream.py [--seconds 5] [--concurrency 64] [--rounds 3]

The module runs in a process of its own (``--serve module`` or ``--serve faststream``), the caller
(the hub's ``Router``, as ``sdk.Client`` calls, ``--concurrency`` in flight) in this one, on an
embedded nats-server, both under the operator's credential. Rounds alternate the two; each prints
calls/s and the CPU time the module's process spent per call, then the ratio FastStream / Module
of both. On a busy machine
the CPU per call is the steadier figure: the module's process is what FastStream adds work to.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from faststream import FastStream
from faststream.nats import NatsBroker

from democratic_ai.contracts import ensure_streams, new_request
from democratic_ai.contracts.bus import CREDENTIAL_ENV, BusOptions, connect
from democratic_ai.hub import Router
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.sdk import Module, capability
from democratic_ai.sdk.faststream import broker_arguments, serve

ANY = {"type": "object"}


class Noop(Module):
    module_id = "bench-noop"

    @capability("bench.noop", ANY, ANY)
    async def noop(self) -> dict:
        return {}


async def _serve(kind: str, url: str) -> None:
    """Serve Noop until stdin closes, the plain way or from a FastStream app (credential: the environment's)."""
    bus = BusOptions.from_env(url)
    module = Noop()
    if kind == "module":
        nc = await connect(bus, "bench-module")
        await module.start(nc)
    else:
        app = FastStream(NatsBroker(**broker_arguments(bus), logger=None), logger=None)
        serve(app, module)
        await app.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def _load(router: Router, seconds: float, concurrency: int) -> int:
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await router.call(new_request("bench.noop", b"{}", tenant_id="bench", source_module_id="bench"))
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def _round(kind: str, server: NatsServer, router: Router, args: argparse.Namespace) -> tuple[float, float]:
    """Calls/s and the module process's CPU microseconds per call."""
    env = {**os.environ, CREDENTIAL_ENV: server.bus("operator").credential}
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--url", server.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        await _load(router, 1.0, args.concurrency)  # warm-up
        process = psutil.Process(child.pid)
        before = process.cpu_times()
        calls = await _load(router, args.seconds, args.concurrency)
        after = process.cpu_times()
        cpu = (after.user - before.user) + (after.system - before.system)
        return calls / args.seconds, cpu / calls * 1e6
    finally:
        child.communicate(timeout=15)


async def _main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder, NatsServer(Path(folder), port=0) as server:
        nc = await connect(server.bus("operator"), "bench-caller")
        await ensure_streams(nc.jetstream())
        router = Router(nc, source_id="bench")
        for number in range(args.rounds):
            plain = await _round("module", server, router, args)
            fast = await _round("faststream", server, router, args)
            print(
                f"round {number + 1}: Module.start {plain[0]:7.0f} calls/s {plain[1]:6.0f} µs CPU/call | "
                f"FastStream {fast[0]:7.0f} calls/s {fast[1]:6.0f} µs CPU/call | "
                f"FastStream/Module: throughput {fast[0] / plain[0]:.2f}, CPU per call {fast[1] / plain[1]:.2f}"
            )
        await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", choices=("module", "faststream"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    asyncio.run(_serve(arguments.serve, arguments.url) if arguments.serve else _main(arguments))
