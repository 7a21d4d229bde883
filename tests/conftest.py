"""Fixtures: a real nats-server with JetStream and a real PostgreSQL for the whole session.

Tests share the servers but not their data: each test gets a fresh database, and names its
tenants and modules uniquely, so streams shared by all tests never mix their results.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import nats
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS

from democratic_ai.contracts import ensure_streams
from democratic_ai.hub import Hub
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import free_port
from democratic_ai.ops.postgres_server import PostgresServer
from democratic_ai.schemas import create_pool, migrate
from democratic_ai.sdk import Module
from democratic_ai.services.gateway import GatewayConfig, create_runner
from democratic_ai.services.identity import issue_api_key


def unique(prefix: str) -> str:
    """A subject-safe name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


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
    connection = await nats.connect(nats_server.url, name="test")
    await ensure_streams(connection.jetstream())
    yield connection
    await connection.close()


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

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key, "Content-Type": "application/json"}


@pytest.fixture
async def gateway(nats_server: NatsServer, database_url: str, nc: NATS) -> AsyncIterator[Gateway]:
    """A gateway on a random port, and an admin key of a tenant of its own."""
    tenant = unique("tenant")
    key = await issue_api_key(nc.jetstream(), tenant_id=tenant, role="super_admin", name="test")
    port = free_port()
    runner = create_runner(GatewayConfig(nats_url=nats_server.url, database_url=database_url, port=port))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield Gateway(url=f"http://127.0.0.1:{port}", api_key=key.secret, tenant=tenant)
    await runner.cleanup()


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
