"""Fixtures of the gateway's tests that need the projections worker's operator desk."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from support.quarantine import PoisonValues, projections_admin


@pytest.fixture
def poison() -> PoisonValues:
    """A projection of this test's own that quarantines values too big for its column."""
    return PoisonValues()


@pytest.fixture
async def ops_desk(nc: NATS, pool: asyncpg.Pool, poison: PoisonValues) -> AsyncIterator[None]:
    """The projections worker's answers to ops.projections.* (the platform's projections and ``poison``)."""
    async with projections_admin(nc, pool, poison):
        yield
