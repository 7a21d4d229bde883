"""Benchmark of the call path: what the platform costs on top of raw NATS and a bare HTTP app.

    .venv/bin/python tests/bench/bench_call_path.py [--seconds 5] [--concurrency 64] [--authorization both]

From one run it prints calls/s and p50/p99 latency, with ``--concurrency`` calls in flight, for

    (a) raw nats-py request/reply to an echo responder          (floor of b)
    (r) (a) plus the two record publishes of the design          (floor of b with its records)
    (b) ``sdk.Client.call`` to a no-op capability of a ``Module``
    (c) HTTP through the real gateway (API key, router, records) to that ``Module``
    (d) a bare aiohttp app doing the raw NATS request of (a)     (floor of c)

and the ratios b/a and c/d in throughput and the p50 difference c - d (b/r: what the SDK
costs beyond the records every call publishes by design); then the CPU time each
process spent per call in the measured window, which shows where a call's cost goes and is
steadier than throughput when other work shares the machine.

Process layout. On a small machine the Python process is the bottleneck, so each side of a
call gets a process of its own, the same way in every scenario, so a ratio compares code and
not scheduling:

    main process     embedded nats-server and PostgreSQL (children of their own), the NATS
                     caller of (a)/(b), the HTTP server of (c)/(d)
    --serve raw      the echo responder of (a) and (d)
    --serve raw-records  the echo responder of (r): it also publishes the response record
    --serve module   the no-op ``Module`` of (b) and (c)
    --load URL       the HTTP load generator of (c) and (d): aiohttp, one connector limited
                     to ``--concurrency``; prints its result as JSON

With ``--authorization both`` (the default) every scenario runs twice, on a server with the
platform's authorization (each process with its role's credential, the module with a module
credential admitted by the auth callout) and on one without any, and the ratios on/off are printed
too: what the trust boundary costs a call. Every process runs uvloop. The MCP stream exists before
(b)/(c), so the records the SDK and the gateway publish for each request and response are stored
and counted. Each measurement follows a warm-up; every wait is bounded; the servers stop on errors and Ctrl-C too.

Reading the figures: with the machine saturated, latency is concurrency / throughput (Little's
law), so at 64 in flight the p50 difference c - d restates the throughput ratio; run with
``--concurrency 1`` to see what the gateway adds to one unloaded call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import uvloop
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from democratic_ai.contracts import ensure_streams, subjects
from democratic_ai.contracts.bus import CREDENTIAL_ENV, CREDENTIAL_FILE_ENV, BusOptions, connect, role_of
from democratic_ai.ops.nats_server import CONFIG_PATH, NatsServer
from democratic_ai.ops.postgres_server import PostgresServer
from democratic_ai.schemas import app_dsn, migrate
from democratic_ai.sdk import Client, Module, capability
from democratic_ai.services.busauth import BusAuthorizer, Signer, inbox_prefix
from democratic_ai.services.gateway import GatewayConfig, create_app
from democratic_ai.services.identity import IdentityIndex, KeyEncryptionKey, ensure_bootstrap
from democratic_ai.services.identity.bootstrap import SYSTEM_TENANT, ensure_platform_module

RAW_SUBJECT = "bench.raw"  # not captured by any stream, like mcp.call.*
CAPABILITY = "bench.noop"
TENANT = SYSTEM_TENANT  # the tenant of the bootstrap key, so (b) and (c) record under the same one
PAYLOAD: dict[str, Any] = {"n": 1}
BODY = json.dumps(PAYLOAD).encode()
INVOKE_PATH = f"/v1/capabilities/{CAPABILITY}/invoke"
CALL_TIMEOUT = 5.0  # seconds; any single call
READY_TIMEOUT = 30.0  # seconds; a responder, module or gateway becoming usable
API_KEY_ENV = "BENCH_API_KEY"  # the load generator's key travels in its environment, not argv
SCENARIOS = {
    "a": "(a) raw NATS request/reply",
    "r": "(r) raw NATS + records",
    "b": "(b) SDK Client -> Module",
    "c": "(c) HTTP gateway -> Module",
    "d": "(d) HTTP bare aiohttp -> raw NATS",
}
# The processes whose CPU time is counted: the NATS caller of (a)/(b) or the load generator of
# (c)/(d), the HTTP server of (c)/(d), the responder or module, and nats-server.
ROLES = ("caller", "http", "server", "nats")

Call = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Result:
    calls: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    p95_ms: float = float("nan")  # the load test's target; the benchmarks read p50 and p99
    cpu_us: dict[str, float] = field(default_factory=dict)  # CPU µs per call, by role

    @property
    def rate(self) -> float:
        return self.calls / self.seconds


class NoopModule(Module):
    """A module whose only capability does nothing."""

    module_id = "bench"

    @capability(CAPABILITY, {"type": "object"}, {"type": "object"})
    async def noop(self, **fields: Any) -> dict[str, Any]:
        return {"ok": True}


async def drive(call: Call, concurrency: int, warmup: float, seconds: float) -> Result:
    """Run ``concurrency`` loops of ``call`` for ``warmup + seconds``; measure calls started after the warm-up."""
    latencies: list[float] = []
    errors = 0
    measure_from = time.perf_counter() + warmup
    until = measure_from + seconds

    async def worker() -> None:
        nonlocal errors
        while (started := time.perf_counter()) < until:
            try:
                await call()
            except Exception:  # counted, not fatal: a failing path shows as errors in the table
                ok = False
            else:
                ok = True
            if started >= measure_from:
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return Result(
        calls=len(latencies),
        errors=errors,
        seconds=seconds,
        p50_ms=quantile(0.50),
        p95_ms=quantile(0.95),
        p99_ms=quantile(0.99),
    )


async def cpu_seconds(pids: dict[str, int], warmup: float, seconds: float) -> dict[str, float]:
    """CPU seconds (user + system) each process spends in the measured window of a scenario
    that starts now: after ``warmup``, for ``seconds``."""
    processes = {role: psutil.Process(pid) for role, pid in pids.items()}

    def snapshot() -> dict[str, float]:
        return {role: sum(p.cpu_times()[:2]) for role, p in processes.items()}

    await asyncio.sleep(warmup)
    before = snapshot()
    await asyncio.sleep(seconds)
    after = snapshot()
    return {role: after[role] - before[role] for role in processes}


def with_cpu(result: Result, spent: dict[str, float]) -> Result:
    return replace(result, cpu_us={role: s / result.calls * 1e6 for role, s in spent.items()} if result.calls else {})


async def until_ok(call: Call, what: str) -> None:
    """Retry ``call`` until it succeeds, at most :data:`READY_TIMEOUT` seconds."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            await call()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready within {READY_TIMEOUT:g} s: {exc!r}") from exc
        await asyncio.sleep(0.1)


async def post(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> bytes:
    """POST the benchmark payload; raise unless the answer is 200."""
    async with session.post(url, data=BODY, headers=headers) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
        return body


# --- child processes -------------------------------------------------------------------------


async def serve(kind: str) -> None:
    """``--serve raw|raw-records|module``: answer calls until SIGTERM or until the parent closes our stdin."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 4096):  # EOF: the parent is gone or done with us
            loop.remove_reader(sys.stdin.fileno())
            stop.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    # No hub runs here: the module's announcement retries stay unanswered, which is cheap but chatty.
    logging.getLogger("democratic_ai.sdk.module").setLevel(logging.ERROR)
    options = BusOptions.from_env()  # the parent passes NATS_URL and the credential
    nc = await connect(
        options,
        f"bench-serve-{kind}",
        inbox_prefix=inbox_prefix(NoopModule.module_id).encode() if kind == "module" else b"_INBOX",
    )
    module: Module | None = None
    if kind == "raw":

        async def echo(msg: Msg) -> None:
            await msg.respond(msg.data)

        await nc.subscribe(RAW_SUBJECT, cb=echo)
    elif kind == "raw-records":
        record = subjects.record_response(TENANT, RAW_SUBJECT)

        async def echo_recorded(msg: Msg) -> None:
            await msg.respond(msg.data)
            await nc.publish(record, msg.data)

        await nc.subscribe(RAW_SUBJECT, cb=echo_recorded)
    else:
        module = NoopModule(
            None if role_of(options.credential) else NoopModule.config_for_credential(options.credential)
        )
        await module.start(nc)
    await nc.flush()
    await stop.wait()
    if module is not None:
        await module.stop(grace=1.0)
    await nc.drain()


async def load(url: str, concurrency: int, warmup: float, seconds: float) -> Result:
    """``--load URL``: POST to ``url`` from ``concurrency`` workers over one connector."""
    headers = {"X-API-Key": os.environ[API_KEY_ENV], "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        print("go", flush=True)  # the parent starts counting CPU time from this line
        return await drive(partial(post, session, url, headers), concurrency, warmup, seconds)


async def spawn(*args: str, env: dict[str, str] | None = None, stdout: int | None = None) -> asyncio.subprocess.Process:
    """This script in another process: in a session of its own, so Ctrl-C reaches only us and we
    stop it; with stdin a pipe, so a server child also stops when we close it or die."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).resolve()),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=stdout,
        env=env,
        start_new_session=True,
    )


async def stop_child(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# --- scenarios (main process) ----------------------------------------------------------------


def bare_app(bus: BusOptions) -> web.Application:
    """The HTTP floor: same route as the gateway, one raw NATS request, the answer's bytes as JSON."""
    app = web.Application()
    nc_key = web.AppKey("nc", NATS)

    async def connection(app: web.Application) -> AsyncIterator[None]:
        app[nc_key] = await connect(bus, "bench-bare-http")
        yield
        await app[nc_key].drain()

    async def invoke(request: web.Request) -> web.Response:
        answer = await request.app[nc_key].request(RAW_SUBJECT, await request.read(), timeout=CALL_TIMEOUT)
        return web.Response(body=answer.data, content_type="application/json")

    app.cleanup_ctx.append(connection)
    app.router.add_post(INVOKE_PATH, invoke)
    return app


async def over_http(app: web.Application, api_key: str, args: argparse.Namespace, pids: dict[str, int]) -> Result:
    """Serve ``app`` here and load it from a ``--load`` child, once it answers 200; count the
    CPU time of the processes in ``pids``, of this one and of the load generator."""
    runner = web.AppRunner(app, access_log=None)  # as ops.services.run_gateway does
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}{INVOKE_PATH}"
        headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT)) as session:
            # Non-200 until the API-key index has the key (401) and the module serves (503).
            await until_ok(partial(post, session, url, headers), url)
        proc = await spawn(
            "--load",
            url,
            "--concurrency",
            str(args.concurrency),
            "--warmup",
            str(args.warmup),
            "--seconds",
            str(args.seconds),
            env={**os.environ, API_KEY_ENV: api_key},
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
            pids = {**pids, "caller": proc.pid, "http": os.getpid()}
            spent, out = await asyncio.wait_for(
                asyncio.gather(cpu_seconds(pids, args.warmup, args.seconds), proc.stdout.read()),
                args.warmup + args.seconds + READY_TIMEOUT,
            )
            await proc.wait()
        finally:
            await stop_child(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"the load generator exited with code {proc.returncode}")
        return with_cpu(Result(**json.loads(out)), spent)
    finally:
        await runner.cleanup()


def progress(scenario: str) -> None:
    print(f"running {SCENARIOS[scenario]} ...", file=sys.stderr, flush=True)


async def run_all(
    server: NatsServer, database_url: str, args: argparse.Namespace, authorized: bool
) -> dict[str, Result]:
    results: dict[str, Result] = {}
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)  # the read models, and the app role the gateway connects as
    finally:
        await conn.close()
    nc = await connect(server.bus("operator"), "bench-caller")
    authorizer: BusAuthorizer | None = None
    children: list[asyncio.subprocess.Process] = []
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        key = await ensure_bootstrap(js)  # a super-admin API key of the system tenant
        raw_env = {**os.environ, **server.environment("operator")}
        module_env = dict(raw_env)
        if authorized:
            # The module connects as modules do: with its own credential, admitted by the callout.
            auth = await connect(server.bus("busauth"), "bench-busauth")
            system = await connect(server.bus("sys"), "bench-sys")
            authorizer = BusAuthorizer(Signer(server.credentials.issuer_seed_file.read_text()), IdentityIndex())
            await authorizer.start(auth, system)
            credential = await ensure_platform_module(js, NoopModule.module_id, "bench", (CAPABILITY,), None)
            module_env[CREDENTIAL_ENV] = credential or ""
            module_env.pop(CREDENTIAL_FILE_ENV, None)
        n, warmup, seconds = args.concurrency, args.warmup, args.seconds
        nats_pid = next(p.pid for p in psutil.Process().children() if p.name().startswith("nats-server"))

        async def measure(call: Call) -> Result:
            pids = {"caller": os.getpid(), "server": children[-1].pid, "nats": nats_pid}
            result, spent = await asyncio.gather(drive(call, n, warmup, seconds), cpu_seconds(pids, warmup, seconds))
            return with_cpu(result, spent)

        raw_call = partial(nc.request, RAW_SUBJECT, BODY, timeout=CALL_TIMEOUT)
        request_record = subjects.record_request(TENANT, RAW_SUBJECT)

        async def recorded_call() -> Msg:
            """(a) with the SDK's record of the request, published first as the router does."""
            await nc.publish(request_record, BODY)
            return await nc.request(RAW_SUBJECT, BODY, timeout=CALL_TIMEOUT)

        sdk_call = partial(Client(nc, source_id="bench", tenant=TENANT).call, CAPABILITY, PAYLOAD)

        children.append(await spawn("--serve", "raw", env=raw_env))
        await until_ok(raw_call, "the raw responder")
        progress("a")
        results["a"] = await measure(raw_call)
        progress("d")
        results["d"] = await over_http(
            bare_app(server.bus("operator")), key, args, {"server": children[-1].pid, "nats": nats_pid}
        )
        await stop_child(children.pop())

        children.append(await spawn("--serve", "raw-records", env=raw_env))
        await until_ok(recorded_call, "the recording raw responder")
        progress("r")
        results["r"] = await measure(recorded_call)
        await stop_child(children.pop())

        children.append(await spawn("--serve", "module", env=module_env))
        await until_ok(sdk_call, "the module")
        progress("b")
        results["b"] = await measure(sdk_call)
        progress("c")
        # As in production, the gateway reads the read models as the read-only app role.
        gateway = create_app(
            GatewayConfig(
                bus=server.bus("gateway"), database_url=app_dsn(database_url), port=0, kek=KeyEncryptionKey.generate()
            )
        )
        results["c"] = await over_http(gateway, key, args, {"server": children[-1].pid, "nats": nats_pid})
    finally:
        for proc in children:
            await stop_child(proc)
        if authorizer is not None:
            await authorizer.stop()
        await nc.close()
    return results


def report(results: dict[str, Result], args: argparse.Namespace, authorization: str) -> None:
    print(
        f"\ncall path, authorization {authorization}, {args.concurrency} calls in flight, {args.seconds:g} s each"
        f" after {args.warmup:g} s warm-up"
    )
    print(f"{'scenario':<36}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for key, name in SCENARIOS.items():
        r = results[key]
        print(f"{name:<36}{r.rate:>10.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.errors:>8}")
    a, r, b, c, d = (results[k] for k in "arbcd")
    for label, value, target, ok in (
        ("b/a throughput", f"{b.rate / a.rate:.2f}", ">= 0.70", b.rate / a.rate >= 0.7),
        ("c/d throughput", f"{c.rate / d.rate:.2f}", ">= 0.80", c.rate / d.rate >= 0.8),
        # Within 0.5 ms of the floor for one unloaded call (--concurrency 1); at 64 in flight the
        # difference restates the throughput ratio (Little's law).
        ("c-d p50 (ms)", f"{c.p50_ms - d.p50_ms:+.2f}", "<= 0.50", c.p50_ms - d.p50_ms <= 0.5),
    ):
        print(f"{label:<36}{value:>10}   target {target}  {'ok' if ok else 'MISS'}")
    ratios = f"{r.rate / a.rate:.2f}, {b.rate / r.rate:.2f}"
    print(f"{'r/a, b/r throughput':<36}{ratios:>10}   (the records; the SDK beyond them)")
    print("\nCPU µs per call (caller: the NATS caller of a/b, the load generator of c/d)")
    print(f"{'scenario':<36}" + "".join(f"{role:>8}" for role in (*ROLES, "total")))
    for key, name in SCENARIOS.items():
        cpu = results[key].cpu_us
        cells = [f"{cpu[role]:>8.1f}" if role in cpu else f"{'-':>8}" for role in ROLES]
        print(f"{name:<36}{''.join(cells)}{sum(cpu.values()):>8.1f}")
    # Where all processes compete for the cores, throughput goes as 1 / total CPU per call.
    total = {key: sum(results[key].cpu_us.values()) for key in SCENARIOS}
    if all(total.values()):
        print(
            f"{'b/a, c/d, b/r by total CPU':<36}{total['a'] / total['b']:>10.2f}{total['d'] / total['c']:>8.2f}"
            f"{total['r'] / total['b']:>8.2f}   (the throughput ratios when the cores are the limit)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each measurement")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    parser.add_argument("--serve", choices=("raw", "raw-records", "module"), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each mode, alternated (default 1)")
    parser.add_argument(
        "--authorization",
        choices=("on", "off", "both"),
        default="both",
        help="measure with the platform's bus authorization, without it, or both (default)",
    )
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        uvloop.run(serve(args.serve))
        return
    if args.load:
        result = uvloop.run(load(args.load, args.concurrency, args.warmup, args.seconds))
        print(json.dumps(asdict(result)))
        return

    modes = {"on": [True], "off": [False], "both": [False, True]}[args.authorization]
    runs: dict[bool, list[dict[str, Result]]] = {mode: [] for mode in modes}
    for round_number in range(1, args.rounds + 1):
        for authorized in modes:  # alternated, so drift on a shared machine falls on both alike
            label = "on" if authorized else "off"
            print(f"round {round_number}, authorization {label}:", file=sys.stderr, flush=True)
            runs[authorized].append(measure_all(args, authorized))
            report(runs[authorized][-1], args, f"{label}, round {round_number}")
    if len(runs) == 2:
        print(
            "\nauthorization on / off, throughput by round and median (the cost of the trust boundary; target >= 0.95)"
        )
        for key in "abcd":
            ratios = [on[key].rate / off[key].rate for on, off in zip(runs[True], runs[False], strict=True)]
            median = statistics.median(ratios)
            print(
                f"{SCENARIOS[key]:<36}{'  '.join(f'{r:.2f}' for r in ratios):>24}   median {median:.2f}"
                f"   {'ok' if median >= 0.95 else 'MISS'}"
            )


def open_config(folder: Path) -> Path:
    """A server configuration like nats.conf but with no authorization at all: the floor of ``on``."""
    path = folder / "open.conf"
    path.write_text("max_payload: 8MB\njetstream { max_memory_store: 256MB, max_file_store: 10GB }\n")
    return path


def measure_all(args: argparse.Namespace, authorized: bool) -> dict[str, Result]:
    with tempfile.TemporaryDirectory(prefix="dai-bench-", ignore_cleanup_errors=True) as tmp:
        config = CONFIG_PATH if authorized else open_config(Path(tmp))
        nats_server, postgres = NatsServer(Path(tmp), port=0, config=config), PostgresServer(Path(tmp))
        try:
            nats_server.start()
            postgres.start()
            database_url = postgres.ensure_database("bench")
            return uvloop.run(run_all(nats_server, database_url, args, authorized))
        except KeyboardInterrupt:
            sys.exit("interrupted")
        finally:
            postgres.stop()
            nats_server.stop()


if __name__ == "__main__":
    main()
