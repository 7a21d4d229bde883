"""Fixtures: a real nats-server with JetStream and a real PostgreSQL for the whole session.

Tests share the servers but not their data: each test gets a fresh database, and names its
tenants and modules uniquely, so streams shared by all tests never mix their results.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import msgspec
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS

from democratic_ai.contracts import ensure_streams
from democratic_ai.contracts.bus import connect
from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.identity_events import ApiKeyIssued, TenantCreated, encode_event
from democratic_ai.hub import Hub
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import free_port
from democratic_ai.ops.postgres_server import PostgresServer
from democratic_ai.projections import PROJECTIONS, ProjectionRunner
from democratic_ai.schemas import app_dsn, create_pool, migrate
from democratic_ai.sdk import Module, capability
from democratic_ai.services.busauth import BusAuthorizer, Signer
from democratic_ai.services.gateway import GatewayConfig, create_app
from democratic_ai.services.gateway.app import runner_for
from democratic_ai.services.gateway.state import METERING
from democratic_ai.services.identity import IdentityIndex, KeyEncryptionKey
from democratic_ai.services.identity.bootstrap import new_api_key_secret
from democratic_ai.services.identity.principal import sha256_hex
from democratic_ai.services.identity.sealing import KEK_ENV, KEK_FILE_ENV
from democratic_ai.services.metering import Metering, MeteringConfig, PublisherConfig

from streaming_modules import Streamer


def unique(prefix: str) -> str:
    """A subject-safe name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session", autouse=True)
def kek() -> Iterator[KeyEncryptionKey]:
    """The session's key-encryption key: passed to in-process gateways, and in DAI_KEK to the
    platform processes tests start (they inherit the environment)."""
    key = KeyEncryptionKey.generate()
    saved = {name: os.environ.pop(name, None) for name in (KEK_ENV, KEK_FILE_ENV)}
    os.environ[KEK_ENV] = key.to_text()
    yield key
    for name, value in saved.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats"), port=0) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with PostgresServer(tmp_path_factory.mktemp("pg")) as server:
        yield server


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    """A connection with the operator's credential (it may do anything on the bus), streams ensured."""
    connection = await connect(nats_server.bus("operator"), "test")
    await ensure_streams(connection.jetstream())
    yield connection
    await connection.close()


@pytest.fixture(scope="session")
async def bus_authorizer(nats_server: NatsServer) -> AsyncIterator[None]:
    """The auth callout, as `dai up` runs it: admits modules with credentials from POST /v1/modules."""
    auth = await connect(nats_server.bus("busauth"), "test-busauth")
    system = await connect(nats_server.bus("sys"), "test-busauth-sys")
    operator = await connect(nats_server.bus("operator"), "test-streams")
    await ensure_streams(operator.jetstream())  # the authorizer follows IDENTITY
    await operator.close()
    authorizer = BusAuthorizer(Signer(nats_server.credentials.issuer_seed_file.read_text()), IdentityIndex())
    await authorizer.start(auth, system)
    yield
    await authorizer.stop()
    await system.close()
    await auth.close()


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> str:
    return postgres_server.ensure_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
    yield pool
    await pool.close()


@dataclass(frozen=True)
class Gateway:
    url: str
    api_key: str
    tenant: str
    app: web.Application | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key, "Content-Type": "application/json"}

    @property
    def metering(self) -> Metering:
        if self.app is None:
            raise RuntimeError("this gateway runs in another process")
        return self.app[METERING]


# Test gateways flush usage every 50 ms, so read models catch up quickly.
TEST_METERING = MeteringConfig(publisher=PublisherConfig(max_delay=0.05))


async def issue_key(nc: NATS, tenant: str, role: str = "super_admin", rate_limit: int | None = None) -> str:
    """Record a tenant (once) and an owner-less API key of ``role`` for it, as ``dai up`` does
    for its admin; ``rate_limit`` is the key's own limit in calls per minute."""
    js = nc.jetstream()
    meta = Meta(at=datetime.now(UTC))
    await js.publish(f"iam.{tenant}.tenant.{tenant}", encode_event(TenantCreated(tenant_id=tenant, meta=meta, name=tenant)),
                     headers={"Nats-Msg-Id": f"tenant-{tenant}"})
    secret = new_api_key_secret()
    key_id = secret.split("_", 2)[1]
    await js.publish(f"iam.{tenant}.api_key.{key_id}", encode_event(ApiKeyIssued(
        tenant_id=tenant, meta=meta, key_id=key_id, prefix=secret[:16], sha256=sha256_hex(secret), role=role,
        rate_limit=rate_limit,
    )))
    return secret


StartGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway(
    nats_server: NatsServer, database_url: str, pool: asyncpg.Pool, nc: NATS, projections: None,
    kek: KeyEncryptionKey,
) -> AsyncIterator[StartGateway]:
    """Start in-process gateways on random ports (as the read-only app role), each with a
    super-admin key of a tenant of its own; ``metering`` sets their plans and publishing,
    ``kek`` replaces the session's key-encryption key, and any other keyword a field of
    ``GatewayConfig``."""
    runners: list[web.AppRunner] = []
    session_kek = kek

    async def start(
        metering: MeteringConfig = TEST_METERING, tenant: str | None = None, kek: KeyEncryptionKey | None = None,
        **config: object,
    ) -> Gateway:
        tenant = tenant or unique("tenant")
        key = await issue_key(nc, tenant)
        port = free_port()
        gateway_config = GatewayConfig(bus=nats_server.bus("gateway"), database_url=app_dsn(database_url), port=port,
                                       metering=metering, kek=kek or session_kek, **config)  # type: ignore[arg-type]
        app = create_app(gateway_config)
        runner = runner_for(app)  # as create_runner serves it
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return Gateway(url=f"http://127.0.0.1:{port}", api_key=key, tenant=tenant, app=app)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def gateway(start_gateway: StartGateway) -> Gateway:
    """A gateway on a random port (as the read-only app role), and a super-admin key of a tenant of its own."""
    return await start_gateway()


class Echo(Module):
    """A trivial module: answers its input, or fails on request."""

    module_id = "echo-test"

    @capability(
        "test.echo",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}, "fail": {"type": "boolean"},
                                                       "sleep_ms": {"type": "integer"}}},
        output_schema={"type": "object"},
    )
    async def echo(self, text: str = "", fail: bool = False, sleep_ms: int = 0) -> dict:
        if sleep_ms:
            await asyncio.sleep(sleep_ms / 1000)
        if fail:
            raise RuntimeError("asked to fail")
        return {"text": text}


@pytest.fixture
async def echo(nc: NATS) -> AsyncIterator[Echo]:
    """The ``test.echo`` capability, served in-process."""
    module = Echo()
    await module.start(nc)
    yield module
    await module.stop()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
async def hub(nc: NATS) -> AsyncIterator[Hub]:
    hub = Hub()
    await hub.start(nc)
    yield hub
    await hub.stop()


async def registered(hub: Hub, module: Module, timeout: float = 5.0) -> None:
    """Wait until the hub has recorded ``module``'s manifest in the REGISTRY stream."""
    digest = module.manifest.digest()
    deadline = asyncio.get_running_loop().time() + timeout
    while hub.registry.digests.get(module.module_id) != digest:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{module.module_id} was not registered within {timeout} s")
        await asyncio.sleep(0.02)


@pytest.fixture
async def streamer(nc: NATS, hub: Hub) -> AsyncIterator[Streamer]:
    """The streaming test module, started and registered (so the gateway lists and routes it)."""
    module = Streamer()
    await module.start(nc)
    await registered(hub, module)
    yield module
    await module.stop(grace=1.0)


async def http(
    method: str, url: str, *, json: object = None, credential: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    """One HTTP request; returns the status and the JSON body (``{}`` for an empty one)."""
    sent = dict(headers or {})
    if credential is not None:
        sent["Authorization"] = f"Bearer {credential}"
    async with aiohttp.ClientSession() as session, session.request(method, url, json=json, headers=sent) as response:
        body = await response.read()
        return response.status, (msgspec.json.decode(body) if body else {})


@pytest.fixture
async def projections(nc: NATS, pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Every projection folding into this test's database, in-process."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(ProjectionRunner(nc.jetstream(), pool, p, batch=256).run(stop)) for p in PROJECTIONS.values()]
    yield
    stop.set()
    await asyncio.gather(*tasks)


async def checkpoint(pool: asyncpg.Pool, name: str) -> int:
    """The last stream sequence projection ``name`` has applied in this test's database."""
    async with pool.acquire() as conn:
        return await conn.fetchval("SELECT last_sequence FROM projection_checkpoints WHERE name = $1", name) or 0


async def reached(pool: asyncpg.Pool, name: str, target: int, timeout: float = 30.0) -> None:
    """Wait until projection ``name`` has applied the stream up to sequence ``target``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (done := await checkpoint(pool, name)) < target:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"projection {name} at {done}, expected {target}")
        await asyncio.sleep(0.02)


async def caught_up(nc: NATS, pool: asyncpg.Pool, name: str, timeout: float = 10.0) -> None:
    """Wait until projection ``name`` has applied everything its stream holds now."""
    target = (await nc.jetstream().stream_info(PROJECTIONS[name].stream)).state.last_seq
    await reached(pool, name, target, timeout)


async def kill_9_mid_batch(pool: asyncpg.Pool, name: str, env: dict[str, str], last: int) -> None:
    """Run ``dai projections run <name>`` as a process, kill -9 it once it has applied part of
    the stream (but not up to ``last``), start it again and wait until it has applied ``last``."""
    command = [sys.executable, "-m", "democratic_ai.ops.cli", "projections", "run", name]
    worker = subprocess.Popen(command, env=env)
    try:
        while (applied := await checkpoint(pool, name)) == 0:
            await asyncio.sleep(0.005)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        assert 0 < applied < last, "the worker finished before it could be killed mid-way"
        worker = subprocess.Popen(command, env=env)
        await reached(pool, name, last, timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=15)


async def forget_usage(nc: NATS, tenant: str) -> None:
    """Purge a bulk test's usage events from the shared USAGE stream, and its calls' records from MCP.

    Every test's fresh database folds the whole stream from the start; a test that publishes
    a hundred thousand events would otherwise slow down every test after it. The MCP records
    go too: a later test's recovery sweep would find their usage missing and publish it again.
    """
    js = nc.jetstream()
    await js.purge_stream("USAGE", subject=f"usage.{tenant}.>")
    await js.purge_stream("MCP", subject=f"mcp.*.{tenant}.>")


@pytest.fixture
async def forget_logins(nc: NATS) -> AsyncIterator[None]:
    """Failed logins count against the client's IP for every later test of the session (twenty in
    15 minutes answer 429): the login attempts a test records are purged from the log after it."""
    js = nc.jetstream()

    async def counts() -> dict[str, int]:
        return dict((await js.stream_info("IDENTITY", subjects_filter="iam.*.login.*")).state.subjects or {})

    before = await counts()
    yield
    for subject, count in (await counts()).items():
        if count > before.get(subject, 0):
            await js.purge_stream("IDENTITY", subject=subject)
