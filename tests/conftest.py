"""Fixtures: a real nats-server with JetStream and a real PostgreSQL for the whole session.

Tests share the servers but not their data: each test gets a fresh database, and names its
tenants and modules uniquely, so streams shared by all tests never mix their results. Only
fixtures live here; the helpers they and the tests use are in the ``support`` package.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS

from democratic_ai.contracts import ensure_streams
from democratic_ai.contracts.bus import connect
from democratic_ai.hub import Hub
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import free_port
from democratic_ai.ops.postgres_server import PostgresServer
from democratic_ai.projections import PROJECTIONS, ProjectionRunner
from democratic_ai.projections.recovery import CHECKPOINT as RECOVERY_CHECKPOINT
from democratic_ai.schemas import app_dsn, create_pool, migrate
from democratic_ai.services.busauth import BusAuthorizer, Signer
from democratic_ai.services.gateway import GatewayConfig, create_app
from democratic_ai.services.gateway.app import runner_for
from democratic_ai.services.identity import IdentityIndex, KeyEncryptionKey
from democratic_ai.services.identity.sealing import KEK_ENV, KEK_FILE_ENV
from democratic_ai.services.metering import MeteringConfig

from support.databases import keep_wal_small, throwaway_database
from support.gateway import TEST_METERING, Gateway, StartGateway, issue_key
from support.modules import Echo, registered
from support.names import unique
from support.paths import REPO
from support.streamer import Streamer


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
        keep_wal_small(server)
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
def database_url(postgres_server: PostgresServer) -> Iterator[str]:
    with throwaway_database(postgres_server) as url:
        yield url


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
    yield pool
    await pool.close()


@pytest.fixture
async def start_gateway(
    nats_server: NatsServer,
    database_url: str,
    pool: asyncpg.Pool,
    nc: NATS,
    projections: None,
    kek: KeyEncryptionKey,
) -> AsyncIterator[StartGateway]:
    """Start in-process gateways on random ports (as the read-only app role), each with a
    super-admin key of a tenant of its own; ``metering`` sets their plans and publishing,
    ``kek`` replaces the session's key-encryption key, and any other keyword a field of
    ``GatewayConfig``."""
    runners: list[web.AppRunner] = []
    session_kek = kek

    async def start(
        metering: MeteringConfig = TEST_METERING,
        tenant: str | None = None,
        kek: KeyEncryptionKey | None = None,
        **config: object,
    ) -> Gateway:
        tenant = tenant or unique("tenant")
        key = await issue_key(nc, tenant)
        port = free_port()
        gateway_config = GatewayConfig(
            bus=nats_server.bus("gateway"),
            database_url=app_dsn(database_url),
            port=port,
            metering=metering,
            kek=kek or session_kek,
            **config,
        )  # type: ignore[arg-type]
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


@pytest.fixture
async def echo(nc: NATS) -> AsyncIterator[Echo]:
    """The ``test.echo`` capability, served in-process."""
    module = Echo()
    await module.start(nc)
    yield module
    await module.stop()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture
async def hub(nc: NATS) -> AsyncIterator[Hub]:
    hub = Hub()
    await hub.start(nc)
    yield hub
    await hub.stop()


@pytest.fixture
async def streamer(nc: NATS, hub: Hub) -> AsyncIterator[Streamer]:
    """The streaming test module, started and registered (so the gateway lists and routes it)."""
    module = Streamer()
    await module.start(nc)
    await registered(hub, module)
    yield module
    await module.stop(grace=1.0)


@pytest.fixture
async def projections(nc: NATS, pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Every projection folding into this test's database, in-process.

    The calls and usage projections start at their streams' ends: the MCP and USAGE streams hold
    every call of the session's earlier tests, which a fresh database would otherwise fold first
    (tens of seconds per test late in the session, and the CPU taken from the other projections;
    a billing read waits for the usage fold to reach the stream's end). This test's calls all
    come after this fixture. A usage recovery sweep a test runs starts there too: before it, the
    MCP stream's calls have their usage in no read model of this database, and the sweep would
    publish it again.
    """
    js = nc.jetstream()
    ends = {
        name: (await js.stream_info(stream)).state.last_seq
        for name, stream in (("calls", PROJECTIONS["calls"].stream), ("usage", PROJECTIONS["usage"].stream))
    }
    ends[RECOVERY_CHECKPOINT] = ends["calls"]  # the sweep follows the MCP stream, as the calls projection does
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO projection_checkpoints (name, last_sequence) VALUES ($1, $2)", list(ends.items())
        )
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(ProjectionRunner(nc.jetstream(), pool, p, batch=256).run(stop))
        for p in PROJECTIONS.values()
    ]
    yield
    stop.set()
    await asyncio.gather(*tasks)


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
