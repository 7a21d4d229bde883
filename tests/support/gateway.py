"""Gateways under test: what a test knows of one, the keys it calls with, and waiting for it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from aiohttp import web
from nats.aio.client import Client as NATS

from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.identity_events import ApiKeyIssued, TenantCreated, encode_event
from democratic_ai.services.gateway.state import METERING
from democratic_ai.services.identity.bootstrap import new_api_key_secret
from democratic_ai.services.identity.principal import sha256_hex
from democratic_ai.services.metering import Metering, MeteringConfig, PublisherConfig

from support.client import http
from support.waiting import eventually


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


StartGateway = Callable[..., Awaitable[Gateway]]
"""The ``start_gateway`` fixture: starts one more in-process gateway."""

# Test gateways flush usage every 50 ms, so read models catch up quickly.
TEST_METERING = MeteringConfig(publisher=PublisherConfig(max_delay=0.05))


async def issue_key(nc: NATS, tenant: str, role: str = "super_admin", rate_limit: int | None = None) -> str:
    """Record a tenant (once) and an owner-less API key of ``role`` for it, as ``dai up`` does
    for its admin; ``rate_limit`` is the key's own limit in calls per minute."""
    js = nc.jetstream()
    meta = Meta(at=datetime.now(UTC))
    tenant_created = TenantCreated(tenant_id=tenant, meta=meta, name=tenant)
    await js.publish(
        f"iam.{tenant}.tenant.{tenant}", encode_event(tenant_created), headers={"Nats-Msg-Id": f"tenant-{tenant}"}
    )
    secret = new_api_key_secret()
    key_id = secret.split("_", 2)[1]
    await js.publish(
        f"iam.{tenant}.api_key.{key_id}",
        encode_event(
            ApiKeyIssued(
                tenant_id=tenant,
                meta=meta,
                key_id=key_id,
                prefix=secret[:16],
                sha256=sha256_hex(secret),
                role=role,
                rate_limit=rate_limit,
            )
        ),
    )
    return secret


async def gateway_ready(url: str, key: str, timeout: float = 30.0) -> None:
    """Wait until the gateway at ``url`` answers and knows ``key`` (reading limits costs no quota)."""

    async def knows_key() -> bool:
        status, _ = await http("GET", f"{url}/v1/usage/limits", headers={"X-API-Key": key})
        return status == 200

    await eventually(knows_key, f"{url} to come up with the key", timeout=timeout, interval=0.05, ignoring=(OSError,))


async def flood(urls: list[str], key: str, total: int) -> list[tuple[str, int, dict[str, str], dict]]:
    """``total`` concurrent ``test.echo`` calls, an equal share to each of ``urls`` (in that order);
    returns the URL, status, headers and body of each."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(url: str) -> tuple[str, int, dict[str, str], dict]:
            async with session.post(
                f"{url}/v1/capabilities/test.echo/invoke", json={"text": "hi"}, headers={"X-API-Key": key}
            ) as response:
                return url, response.status, dict(response.headers), await response.json()

        return await asyncio.gather(*(one(urls[i * len(urls) // total]) for i in range(total)))
