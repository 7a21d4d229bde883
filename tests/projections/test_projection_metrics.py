"""A projections worker's ``/metrics``: checkpoints, lag, applied and failed counts, quarantined
events, recovered usage and reconnects, scraped from the endpoint ``dai projections run`` serves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS

from democratic_ai.ops.metrics_endpoint import MetricsAddress, metrics_address, serve_metrics
from democratic_ai.ops.ports import free_port
from democratic_ai.projections import ProjectionRunner
from democratic_ai.projections.metrics import ProjectionMetrics
from democratic_ai.schemas import create_pool

from support.metrics import Samples, projections_worker, samples, scrape_text
from support.quarantine import TOO_BIG, PoisonValues, prepare_poison
from support.waiting import eventually


@pytest.fixture
async def values(nc: NATS, pool: asyncpg.Pool) -> PoisonValues:
    """A projection of integers into an integer column: 2**40 (TOO_BIG) cannot be folded."""
    await prepare_poison(nc, pool)
    return PoisonValues()


def _of(scraped: Samples, name: str, projection: str) -> float | None:
    return scraped.get((name, (("projection", projection),)))


@asynccontextmanager
async def _served(metrics: ProjectionMetrics) -> AsyncIterator[str]:
    port = free_port()
    runner = await serve_metrics(MetricsAddress("127.0.0.1", port), metrics.render, "test metrics")
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        await runner.cleanup()


async def test_the_metrics_follow_a_projection_through_its_events_and_a_poison_one(
    nc: NATS, pool: asyncpg.Pool, values: PoisonValues
) -> None:
    js = nc.jetstream()
    first = [(await js.publish(values.filter_subject, b'{"value": %d}' % i)).seq for i in range(3)]
    runner = ProjectionRunner(js, pool, values, batch=256)
    metrics = ProjectionMetrics(js, pool, [runner], None, lambda: nc.stats["reconnects"], max_age=0)
    async with _served(metrics) as url:
        # Not running yet: nothing applied, the whole stream ahead.
        before = samples(await scrape_text(url))
        assert _of(before, "dai_projection_checkpoint", values.name) == 0
        assert _of(before, "dai_projection_lag", values.name) == first[-1]  # the stream's last sequence
        assert _of(before, "dai_projection_events_applied_total", values.name) == 0
        assert _of(before, "dai_projection_quarantined_events", values.name) == 0
        assert before[("dai_nats_reconnects_total", ())] == 0
        assert not any(name.startswith("dai_usage_recovered") for name, _ in before)  # no sweep in this worker

        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        try:

            async def at(sequence: int) -> Samples | None:
                scraped = samples(await scrape_text(url))
                return scraped if _of(scraped, "dai_projection_checkpoint", values.name) == sequence else None

            caught_up = await eventually(lambda: at(first[-1]), "the checkpoint to reach the last event", timeout=10)
            assert _of(caught_up, "dai_projection_lag", values.name) == 0
            assert _of(caught_up, "dai_projection_events_applied_total", values.name) == 3
            assert _of(caught_up, "dai_projection_batches_failed_total", values.name) == 0

            # A poison event (too large for the column) and a good one after it.
            await js.publish(values.filter_subject, b'{"value": %d}' % TOO_BIG)
            last = (await js.publish(values.filter_subject, b'{"value": 7}')).seq
            after = await eventually(lambda: at(last), "the checkpoint to pass the poison event", timeout=10)
        finally:
            stop.set()
            await task
    assert _of(after, "dai_projection_lag", values.name) == 0
    assert _of(after, "dai_projection_events_applied_total", values.name) == 4
    assert _of(after, "dai_projection_quarantined_events", values.name) == 1
    # The poison event failed its batch once (alone or with the good one, which that batch's retry folded).
    assert _of(after, "dai_projection_batches_failed_total", values.name) == 1


async def test_positions_are_left_out_while_the_database_is_unreachable(nc: NATS, values: PoisonValues) -> None:
    # A server that is not there: the scrape answers at once with the counters, without the positions.
    nowhere = await create_pool(f"postgresql://dai@127.0.0.1:{free_port()}/dai", min_size=0, max_size=1)
    try:
        runner = ProjectionRunner(nc.jetstream(), nowhere, values)
        metrics = ProjectionMetrics(nc.jetstream(), nowhere, [runner], None, lambda: nc.stats["reconnects"])
        async with _served(metrics) as url:
            scraped = samples(await scrape_text(url))
    finally:
        await nowhere.close()
    assert _of(scraped, "dai_projection_events_applied_total", values.name) == 0
    assert _of(scraped, "dai_projection_checkpoint", values.name) is None
    assert _of(scraped, "dai_projection_lag", values.name) is None


async def test_dai_projections_run_serves_its_metrics_on_loopback(
    nats_server: object, database_url: str, pool: asyncpg.Pool, nc: NATS
) -> None:
    async with projections_worker(
        nats_server.bus("projections"),  # type: ignore[attr-defined]
        database_url,
        pool,
        nc,
        ["registry", "usage"],
    ) as url:
        scraped = samples(await scrape_text(url))
    for projection in ("registry", "usage"):
        assert _of(scraped, "dai_projection_checkpoint", projection) is not None
        assert _of(scraped, "dai_projection_lag", projection) is not None
    assert not any(labels == (("projection", "billing"),) for _, labels in scraped)  # not run by this worker
    assert scraped[("dai_usage_recovered_events_total", ())] == 0  # the sweep runs beside the usage projection


def test_the_metrics_port_comes_from_the_option_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = "DAI_PROJECTIONS_METRICS_PORT"
    monkeypatch.delenv(env, raising=False)
    assert metrics_address(None, "127.0.0.1", env) is None  # off unless asked for
    monkeypatch.setenv(env, "9464")
    assert metrics_address(None, "127.0.0.1", env) == MetricsAddress("127.0.0.1", 9464)
    assert metrics_address(9465, "0.0.0.0", env) == MetricsAddress("0.0.0.0", 9465)  # the option wins
    monkeypatch.setenv(env, "ninety")
    with pytest.raises(SystemExit, match="DAI_PROJECTIONS_METRICS_PORT must be a port number, not 'ninety'"):
        metrics_address(None, "127.0.0.1", env)
    with pytest.raises(SystemExit, match="between 1 and 65535, not 70000"):
        metrics_address(70000, "127.0.0.1", env)


async def test_a_taken_metrics_port_is_one_clear_line() -> None:
    taken = web.AppRunner(web.Application())
    await taken.setup()
    port = free_port()
    await web.TCPSite(taken, "127.0.0.1", port).start()
    try:

        async def render() -> bytes:
            return b""

        with pytest.raises(SystemExit, match=f"port {port} is already in use .projections metrics.; .* --metrics-port"):
            await serve_metrics(MetricsAddress("127.0.0.1", port), render, "projections metrics")
    finally:
        await taken.cleanup()
