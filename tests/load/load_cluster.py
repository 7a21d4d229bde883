"""Load test: many concurrent clients through two gateways on a three-node JetStream cluster.

    .venv/bin/python tests/load/load_cluster.py [--seconds 60] [--clients 200] [--warmup 5]

One run, on one cluster of three nats-servers (every stream and bucket on three replicas) and
one PostgreSQL, measures the same load twice, with ``--clients`` calls in flight from one aiohttp
connector limited to that many, spread over two HTTP servers in turn:

    floor     two bare aiohttp apps, each doing the raw NATS request of bench_call_path's (d) to
              its echo responder (no key, no router, no records, no usage)
    platform  two ``dai gateway`` processes (API key, limits, router, records, usage) calling
              bench_call_path's no-op ``Module`` served by ``dai module run``, with ``dai hub``,
              ``dai bus-auth`` and ``dai projections run`` beside them, as ``dai up`` runs them

and prints p50/p95/p99 and the error rate of each, then checks the targets: p95(platform) within
3x p95(floor), errors under 0.1 %, and, once the projections have folded the usage, the usage read
model's successful api_calls equal to the successful HTTP calls exactly (warm-up and readiness
calls included: they are metered too). It exits 1 when a target is missed.

The load tenant ``load`` is on a plan of its own, written to a plans file for this run
(``DAI_PLANS_FILE``): all four limits of the real plans, each set far above what the run can
reach, so the gateways do all their limiting work (leases on the RATELIMIT stream) and admit
every call. Its key is issued by the identity service, without a limit of its own.

Every process of a side gets its own NATS_URL that lists another member first, so the two HTTP
servers and the responder or module sit on different servers and every call crosses a route.
The processes are the ones the platform runs, so the CPU time each group spent in the measured
window is printed too: on a small machine all of them share the cores, and that table says
what a platform call costs beyond the floor's.

Every wait is bounded; the cluster, the database and every child stop on errors and Ctrl-C, and
the children stop by themselves if this process dies.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from importlib import resources
from pathlib import Path
from typing import IO, Any

import aiohttp
import asyncpg
import psutil
import uvloop
from aiohttp import web
from nats.js import JetStreamContext

from democratic_ai.contracts import ensure_streams
from democratic_ai.contracts.bus import CREDENTIAL_ENV, CREDENTIAL_FILE_ENV, BusOptions, connect
from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.streams import REPLICAS_ENV, STREAMS, USAGE_STREAM
from democratic_ai.ops.nats_cluster import NatsCluster
from democratic_ai.ops.ports import free_port
from democratic_ai.ops.postgres_server import PostgresServer, postmaster
from democratic_ai.ops.reaper import die_with_parent
from democratic_ai.schemas import migrate
from democratic_ai.services.identity import (
    IdentityIndex,
    IdentityService,
    KeyEncryptionKey,
    KeyRing,
    Role,
    UserKeyStore,
    ensure_bootstrap,
)
from democratic_ai.services.identity.bootstrap import ensure_platform_module
from democratic_ai.services.identity.sealing import KEK_FILE_ENV
from democratic_ai.services.plans import PLANS_ENV

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # bench_call_path: the load generator, the floor, the no-op module

from bench_call_path import (  # noqa: E402
    API_KEY_ENV,
    CALL_TIMEOUT,
    CAPABILITY,
    INVOKE_PATH,
    READY_TIMEOUT,
    NoopModule,
    Result,
    bare_app,
    drive,
    post,
    until_ok,
)

TENANT = "load"
REPLICAS = 3
FOLD_TIMEOUT = 120.0  # seconds the projections get to fold the last usage after the load
QUIET = 3.0  # seconds without a usage append after which every gateway has flushed its buffer
STOP_TIMEOUT = 10.0  # seconds a child gets to stop after SIGTERM before it is killed
P95_TARGET = 3.0  # p95(platform) / p95(floor)
ERROR_TARGET = 0.001  # the largest error rate that passes (< 0.1 %)
HIGH = 10**12  # a limit the run cannot reach


@dataclass(frozen=True, slots=True)
class Load:
    """What the load generator measured, and every call it saw succeed (warm-up included)."""

    result: Result
    succeeded: int

    @property
    def error_rate(self) -> float:
        attempted = self.result.calls + self.result.errors
        return self.result.errors / attempted if attempted else 1.0


# --- child processes -------------------------------------------------------------------------


async def generate(urls: list[str], clients: int, warmup: float, seconds: float) -> dict[str, Any]:
    """``--load URL,URL``: ``clients`` workers over one connector, each call to the next URL in turn."""
    headers = {"X-API-Key": os.environ[API_KEY_ENV], "Content-Type": "application/json"}
    targets = itertools.cycle(urls)
    succeeded = 0

    async def call() -> None:
        nonlocal succeeded
        await post(session, next(targets), headers)  # raises unless 200
        succeeded += 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT)) as session:
        print("go", flush=True)  # the parent counts CPU time from this line
        result = await drive(call, clients, warmup, seconds)
    return {"result": asdict(result), "succeeded": succeeded}


async def serve_bare(port: int) -> None:
    """``--bare PORT``: bench_call_path's floor app, on ``port``, until SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    runner = web.AppRunner(bare_app(BusOptions.from_env()), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await stop.wait()
    await runner.cleanup()


# --- the orchestration (main process) ----------------------------------------------------------


class Children:
    """The processes this run started, by name; each logs to a file, all stop together."""

    def __init__(self, logs: Path) -> None:
        logs.mkdir()
        self.logs = logs
        self.running: dict[str, asyncio.subprocess.Process] = {}
        self._files: list[IO[bytes]] = []

    async def start(
        self, name: str, args: list[str], env: dict[str, str], *, output: bool = False
    ) -> asyncio.subprocess.Process:
        """Start ``python args``; its standard output is a pipe if ``output``, else its log."""
        log = (self.logs / f"{name}.log").open("wb")
        self._files.append(log)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdin=asyncio.subprocess.PIPE,  # bench_call_path's responder stops at its EOF
            stdout=asyncio.subprocess.PIPE if output else log,
            stderr=log,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only this process, which stops them in order
            preexec_fn=die_with_parent(),
        )
        self.running[name] = process
        return process

    def check(self) -> None:
        """Raise if a child exited before it was asked to."""
        for name, process in self.running.items():
            if process.returncode is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with code {process.returncode}:\n{tail}")

    async def stop(self, *names: str) -> None:
        for name in names or list(reversed(self.running)):
            process = self.running.pop(name)
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
                except TimeoutError:
                    process.kill()
                    await process.wait()

    def tails(self) -> str:
        """The end of every child's log: what to read when the run failed."""
        return "".join(
            f"--- {log.stem} ---\n{log.read_text(errors='replace')[-1500:]}\n"
            for log in sorted(self.logs.glob("*.log"))
        )

    def close(self) -> None:
        for log in self._files:
            log.close()


def dai(*args: str) -> list[str]:
    return ["-m", "democratic_ai.ops.cli", *args]


def plans_file(folder: Path) -> Path:
    """The packaged plans, and a plan ``load`` for the load tenant with every limit out of reach."""
    plans = json.loads(resources.files("democratic_ai.schemas").joinpath("json/plans.json").read_text())
    plans["plans"][TENANT] = {
        "api_calls": {"limit": HIGH, "window_seconds": 60},
        "compute_ms": {"capacity": HIGH, "refill_per_second": HIGH},
        "bandwidth_bytes": {"capacity": HIGH, "leak_per_second": HIGH},
        "storage_bytes": {"limit": HIGH, "window_seconds": 86400},
    }
    plans["assignments"][TENANT] = TENANT
    path = folder / "plans.json"
    path.write_text(json.dumps(plans))
    return path


async def issue_key(js: JetStreamContext, kek: KeyEncryptionKey) -> str:
    """The load tenant and a developer's API key of it, without a limit of its own."""
    index, user_keys = IdentityIndex(), UserKeyStore(js, kek)
    try:
        await index.start(js)
        await user_keys.start()
        service = IdentityService(js, index, KeyRing(kek), user_keys)
        meta = Meta(at=datetime.now(UTC), actor="operator:load-test")
        await service.create_tenant(meta, TENANT, "Load test")
        issued = await service.issue_api_key(meta, tenant_id=TENANT, role=Role.DEVELOPER, name="load test")
        return issued.secret
    finally:
        await user_keys.stop()
        await index.stop()


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its live descendants; 0 for a process gone."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            total += sum(process.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def snapshot(groups: dict[str, list[int]]) -> dict[str, float]:
    return {group: sum(tree_cpu(pid) for pid in pids) for group, pids in groups.items()}


async def measure(
    children: Children, urls: list[str], key: str, args: argparse.Namespace, groups: dict[str, list[int]]
) -> tuple[Load, dict[str, float]]:
    """Run the load generator against ``urls``; the CPU seconds of each group in its measured window."""
    env = {**os.environ, API_KEY_ENV: key}
    load = await children.start(
        "load",
        [
            str(Path(__file__).resolve()),
            "--load",
            ",".join(urls),
            "--clients",
            str(args.clients),
            "--warmup",
            str(args.warmup),
            "--seconds",
            str(args.seconds),
        ],
        env,
        output=True,
    )
    assert load.stdout is not None  # output=True: a pipe
    groups = {"load generator": [load.pid], **groups}
    await asyncio.wait_for(load.stdout.readline(), READY_TIMEOUT)
    await asyncio.sleep(args.warmup)
    before = snapshot(groups)
    await asyncio.sleep(args.seconds)
    after = snapshot(groups)
    out = await asyncio.wait_for(load.stdout.read(), CALL_TIMEOUT + READY_TIMEOUT)
    await asyncio.wait_for(load.wait(), READY_TIMEOUT)
    await children.stop("load")
    if load.returncode != 0:
        raise RuntimeError(f"the load generator exited with code {load.returncode}")
    data = json.loads(out)
    return Load(Result(**data["result"]), data["succeeded"]), {g: after[g] - before[g] for g in groups}


async def ready(urls: list[str], key: str, children: Children) -> None:
    """Each of ``urls`` answers one call with 200 (within :data:`READY_TIMEOUT`)."""
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT)) as session:
        for url in urls:
            children.check()
            await until_ok(partial(post, session, url, headers), url)


async def folded_successes(pool: asyncpg.Pool, js: JetStreamContext) -> int:
    """The usage read model's successful api_calls of the load tenant, read once the usage
    projection has applied all the USAGE stream holds and the stream has not grown for
    :data:`QUIET` seconds (the gateways flush the usage they buffer within a second); at most
    :data:`FOLD_TIMEOUT` seconds of waiting, then whatever is folded by then."""
    deadline = time.monotonic() + FOLD_TIMEOUT
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        sequence = (await js.stream_info(USAGE_STREAM)).state.last_seq
        if sequence != last:
            last, since = sequence, time.monotonic()
        applied = await pool.fetchval("SELECT last_sequence FROM projection_checkpoints WHERE name = 'usage'") or 0
        if applied >= sequence and time.monotonic() - since >= QUIET:
            break
        await asyncio.sleep(0.5)
    else:
        print(f"the usage projection had not caught up within {FOLD_TIMEOUT:g} s", file=sys.stderr)
    return await pool.fetchval(
        "SELECT count(*) FROM usage_events WHERE tenant_id = $1 AND metric = 'api_calls' AND outcome = 'success'",
        TENANT,
    )


async def run(cluster: NatsCluster, postgres: PostgresServer, args: argparse.Namespace, folder: Path) -> bool:
    database_url = postgres.ensure_database("load")
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)  # the read models, and the app role the gateways read them as
    finally:
        await conn.close()
    children = Children(folder / "logs")
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    nc = await connect(cluster.bus("operator"), "load-operator")
    try:
        js = nc.jetstream()
        await ensure_streams(js, REPLICAS)
        await ensure_bootstrap(js)  # the system tenant, which the module belongs to as dai up's examples do
        credential = await ensure_platform_module(js, NoopModule.module_id, "bench", (CAPABILITY,), None)
        key = await issue_key(js, KeyEncryptionKey.from_text(cluster.credentials.kek_file.read_text()))
        floor, floor_cpu = await run_floor(cluster, key, args, children)
        pg = postmaster(postgres.pgdata)
        before = await stream_sequences(js)
        platform, platform_cpu, primed = await run_platform(
            cluster, database_url, credential, key, args, children, [pg.pid] if pg is not None else []
        )
        expected = platform.succeeded + primed
        print(f"waiting for the usage of {expected} successful calls to be folded ...", file=sys.stderr, flush=True)
        folded = await folded_successes(pool, js)
        children.check()
        after = await stream_sequences(js)
    except BaseException:
        print(children.tails(), file=sys.stderr)
        raise
    finally:
        await nc.drain()
        await pool.close()
        await children.stop()
        children.close()
    ok = report(args, floor, floor_cpu, platform, platform_cpu, folded, expected, primed)
    report_appends({name: after[name] - before[name] for name in after}, expected)
    return ok


async def stream_sequences(js: JetStreamContext) -> dict[str, int]:
    """The last sequence of every stream: what has been appended to it, ever."""
    return {c.name: (await js.stream_info(c.name)).state.last_seq for c in STREAMS if c.name}


def report_appends(appended: dict[str, int], calls: int) -> None:
    """What the platform side appended to each stream, per successful call: each append is
    replicated to three servers and fsynced on each before it is acknowledged."""
    cells = ", ".join(f"{name} {count / calls:.2f}" for name, count in appended.items() if count)
    print(f"stream appends per successful call (three replicas, fsync always): {cells}")


def member_env(cluster: NatsCluster, member: int, role: str | None) -> dict[str, str]:
    """This environment, connecting as ``role`` (if given) to the cluster with ``member`` listed first."""
    env = {**os.environ, REPLICAS_ENV: str(REPLICAS), "NATS_URL": cluster.url_for(member)}
    env.pop(CREDENTIAL_ENV, None)
    env.pop(CREDENTIAL_FILE_ENV, None)
    if role is not None:
        env[CREDENTIAL_FILE_ENV] = str(cluster.credentials.file(role))
    return env


def nats_pids(cluster: NatsCluster) -> list[int]:
    return [server.process.pid for server in cluster.servers]


async def run_floor(
    cluster: NatsCluster, key: str, args: argparse.Namespace, children: Children
) -> tuple[Load, dict[str, float]]:
    print("floor: two bare aiohttp apps -> raw NATS echo responder ...", file=sys.stderr, flush=True)
    await children.start(
        "responder", [str(BENCH / "bench_call_path.py"), "--serve", "raw"], member_env(cluster, 2, "operator")
    )
    ports = [free_port(), free_port()]
    for n, port in enumerate(ports):
        await children.start(
            f"bare-{n + 1}", [str(Path(__file__).resolve()), "--bare", str(port)], member_env(cluster, n, "operator")
        )
    urls = [f"http://127.0.0.1:{port}{INVOKE_PATH}" for port in ports]
    await ready(urls, key, children)
    groups = {
        "HTTP servers (2)": [children.running[f"bare-{n + 1}"].pid for n in range(2)],
        "responder": [children.running["responder"].pid],
        "nats-servers (3)": nats_pids(cluster),
    }
    load, cpu = await measure(children, urls, key, args, groups)
    children.check()
    await children.stop("bare-1", "bare-2", "responder")
    return load, cpu


async def run_platform(
    cluster: NatsCluster,
    database_url: str,
    credential: str | None,
    key: str,
    args: argparse.Namespace,
    children: Children,
    postgres: list[int],
) -> tuple[Load, dict[str, float], int]:
    """The platform's processes, as ``dai up --cluster 3`` runs them, and the load through its two
    gateways; returns the load, the CPU by group and the calls that succeeded before the load."""
    print("platform: two dai gateways -> dai module run (hub, bus-auth, projections) ...", file=sys.stderr, flush=True)
    credentials = cluster.credentials
    database = {"DATABASE_URL": database_url}
    await children.start(
        "bus-auth",
        dai("bus-auth"),
        {
            **member_env(cluster, 0, "busauth"),
            "DAI_BUS_SYS_CREDENTIAL_FILE": str(credentials.file("sys")),
            "DAI_BUS_ISSUER_SEED_FILE": str(credentials.issuer_seed_file),
        },
    )
    await children.start("hub", dai("hub"), member_env(cluster, 1, "hub"))
    await children.start(
        "projections", dai("projections", "run"), {**member_env(cluster, 2, "projections"), **database}
    )
    await children.start(
        "module",
        dai("module", "run", "--wait", f"{BENCH / 'bench_call_path.py'}:NoopModule"),
        {**member_env(cluster, 2, None), CREDENTIAL_ENV: credential or ""},
    )
    plans = plans_file(children.logs.parent)
    ports = [free_port(), free_port()]
    for n, port in enumerate(ports):
        await children.start(
            f"gateway-{n + 1}",
            dai("gateway", "--port", str(port)),
            {
                **member_env(cluster, n, "gateway"),
                **database,
                KEK_FILE_ENV: str(credentials.kek_file),
                PLANS_ENV: str(plans),
            },
        )
    urls = [f"http://127.0.0.1:{port}{INVOKE_PATH}" for port in ports]
    await ready(urls, key, children)  # one successful call through each gateway: metered too
    groups = {
        "gateways (2)": [children.running[f"gateway-{n + 1}"].pid for n in range(2)],
        "module": [children.running["module"].pid],
        "projections": [children.running["projections"].pid],
        "hub, bus-auth": [children.running["hub"].pid, children.running["bus-auth"].pid],
        "nats-servers (3)": nats_pids(cluster),
        "postgres": postgres,
    }
    load, cpu = await measure(children, urls, key, args, groups)
    children.check()
    return load, cpu, len(urls)


def report(
    args: argparse.Namespace,
    floor: Load,
    floor_cpu: dict[str, float],
    platform: Load,
    platform_cpu: dict[str, float],
    folded: int,
    expected: int,
    primed: int,
) -> bool:
    print(
        f"\nload: {args.clients} clients, {args.seconds:g} s measured after {args.warmup:g} s warm-up, two HTTP"
        f" servers on a {REPLICAS}-node JetStream cluster, {psutil.cpu_count()} cores"
    )
    print(f"{'':<40}{'calls':>9}{'calls/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}{'rate':>9}")
    for name, load in (
        ("floor (bare aiohttp -> raw NATS)", floor),
        ("platform (dai gateway -> module)", platform),
    ):
        r = load.result
        print(
            f"{name:<40}{r.calls:>9}{r.rate:>9.0f}{r.p50_ms:>9.1f}{r.p95_ms:>9.1f}{r.p99_ms:>9.1f}{r.errors:>8}"
            f"{load.error_rate:>8.3%} "
        )
    ratio = platform.result.p95_ms / floor.result.p95_ms
    checks = [
        ("p95 platform / floor", f"{ratio:.2f}", f"<= {P95_TARGET:.2f}", ratio <= P95_TARGET),
        (
            "error rate, platform",
            f"{platform.error_rate:.3%}",
            f"< {ERROR_TARGET:.1%}",
            platform.error_rate < ERROR_TARGET,
        ),
        ("error rate, floor", f"{floor.error_rate:.3%}", f"< {ERROR_TARGET:.1%}", floor.error_rate < ERROR_TARGET),
        (
            "usage: folded / HTTP successes",
            f"{folded} / {expected}",
            "equal",
            folded == expected,
        ),
    ]
    print()
    for label, value, target, ok in checks:
        print(f"{label:<40}{value:>22}   target {target:<8} {'ok' if ok else 'MISS'}")
    print(
        f"  (HTTP successes: {platform.succeeded} of the load generator, warm-up included,"
        f" and {primed} readiness calls)"
    )
    print(f"\nCPU in the measured window: cores used (of {psutil.cpu_count()}) and µs per successful call")
    per_call = {}
    for name, cpu, load in (("floor", floor_cpu, floor), ("platform", platform_cpu, platform)):
        calls = max(load.result.calls, 1)
        per_call[name] = sum(cpu.values()) / calls * 1e6
        print(f"  {name}: {sum(cpu.values()) / args.seconds:.2f} cores, {per_call[name]:.0f} µs")
        for group, spent in cpu.items():
            print(f"    {group:<24}{spent / args.seconds:>6.2f}{spent / calls * 1e6:>8.0f} µs")
    # With the cores the limit and a fixed number in flight, latency goes as the CPU a call costs.
    print(
        f"CPU per call, platform / floor: {per_call['platform'] / per_call['floor']:.2f}; load average"
        f" {os.getloadavg()[0]:.1f} (other work on the machine counts too)"
    )
    return all(ok for *_, ok in checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds of each side (default 60)")
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients (default 200)")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds before each measurement (default 5)")
    parser.add_argument("--load", metavar="URLS", help=argparse.SUPPRESS)
    parser.add_argument("--bare", metavar="PORT", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--clients must be at least 1, --seconds positive and --warmup not negative")

    if args.load:
        print(json.dumps(uvloop.run(generate(args.load.split(","), args.clients, args.warmup, args.seconds))))
        return
    if args.bare:
        uvloop.run(serve_bare(args.bare))
        return

    os.environ[REPLICAS_ENV] = str(REPLICAS)  # the identity service's buckets made here, like the streams
    with tempfile.TemporaryDirectory(prefix="dai-load-", ignore_cleanup_errors=True) as tmp:
        folder = Path(tmp)
        cluster, postgres = NatsCluster(folder / "cluster"), PostgresServer(folder)
        try:
            cluster.start()
            postgres.start()
            ok = uvloop.run(run(cluster, postgres, args, folder))
        except KeyboardInterrupt:
            sys.exit("interrupted")
        finally:
            postgres.stop()
            cluster.stop()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
