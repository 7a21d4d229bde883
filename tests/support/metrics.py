"""Scraping ``/metrics``: the samples of a scrape, and the names a family exports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import asyncpg
from nats.aio.client import Client as NATS
from prometheus_client.parser import text_string_to_metric_families

from democratic_ai.ops.metrics_endpoint import MetricsAddress
from democratic_ai.ops.ports import free_port
from democratic_ai.ops.services import run_hub, run_projections
from democratic_ai.projections import PROJECTIONS
from democratic_ai.projections.recovery import CHECKPOINT as RECOVERY_CHECKPOINT

from support.waiting import eventually

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# The series a family of each type exports (prometheus_client's text format, without _created).
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


async def scrape_text(url: str, credential: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


def samples(text: str) -> Samples:
    """(sample name, sorted labels) → value of every sample of a scrape."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def exported_names(text: str) -> set[str]:
    """Every series name a scrape's families export, those without samples yet too (a labelled
    counter has none until its first increment, but says its name and type)."""
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in _SUFFIXES.get(family.type, ("",))
    }


@asynccontextmanager
async def projections_worker(
    bus: object, database_url: str, pool: asyncpg.Pool, nc: NATS, names: list[str]
) -> AsyncIterator[str]:
    """``dai projections run NAMES --metrics-port …`` in-process; yields its metrics URL once it answers.

    The usage projection and its recovery sweep start at their streams' ends, as the
    ``projections`` fixture's do (see there why)."""
    js = nc.jetstream()
    usage_end = (await js.stream_info(PROJECTIONS["usage"].stream)).state.last_seq
    calls_end = (await js.stream_info(PROJECTIONS["calls"].stream)).state.last_seq
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO projection_checkpoints (name, last_sequence) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            [("usage", usage_end), (RECOVERY_CHECKPOINT, calls_end)],
        )
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_projections(bus, database_url, names, stop, MetricsAddress("127.0.0.1", port))  # type: ignore[arg-type]
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        await eventually(lambda: scrape_text(url), "the worker's metrics to answer", timeout=15, ignoring=(OSError,))
        yield url
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


@asynccontextmanager
async def hub_worker(bus: object) -> AsyncIterator[str]:
    """``dai hub --metrics-port …`` in-process; yields its metrics URL once it answers."""
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(run_hub(bus, stop, MetricsAddress("127.0.0.1", port)))  # type: ignore[arg-type]
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        await eventually(lambda: scrape_text(url), "the hub's metrics to answer", timeout=15, ignoring=(OSError,))
        yield url
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
