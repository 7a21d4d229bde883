"""While PostgreSQL cannot be reached, the projection runner, the recovery sweep and the
projections process wait for it — they do not exit — and say so once in the log."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.ops.services import run_projections
from democratic_ai.projections import ProjectionRunner, RecoveryConfig, UsageProjection, UsageRecovery
from democratic_ai.schemas import create_pool, is_unreachable
from democratic_ai.schemas.outage import DatabaseOutage, backoff_delays


def _nowhere(tmp_path: Path) -> str:
    """A DSN whose socket directory has no server in it: every connection attempt is refused."""
    return f"postgresql://postgres@/nothing?host={tmp_path}"


@pytest.fixture
async def unreachable_pool(tmp_path: Path) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(_nowhere(tmp_path), min_size=0, max_size=2)  # min_size=0: connects on demand
    yield pool
    await pool.close()


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        FileNotFoundError(2, "No such file or directory"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.CannotConnectNowError("the database system is in recovery mode"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CrashShutdownError("terminating connection because of crash of another server process"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.InterfaceError("cannot call Transaction.__aexit__(): the underlying connection is closed"),
        asyncpg.InterfaceError("cannot call Connection.fetchval(): connection has been released back to the pool"),
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    ],
)
def test_errors_about_the_database_mean_it_is_unreachable(exc: BaseException) -> None:
    assert is_unreachable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.DataError("value out of range"),
        asyncpg.UniqueViolationError("duplicate key"),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.InterfaceError("pool is closing"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        msgspec.DecodeError("not JSON"),
        ValueError("a bug"),
    ],
)
def test_errors_about_the_data_or_the_code_do_not(exc: BaseException) -> None:
    assert not is_unreachable(exc)


def test_the_backoff_doubles_from_a_fifth_of_a_second_to_five_seconds() -> None:
    assert list(itertools.islice(backoff_delays(), 7)) == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


async def test_an_outage_is_logged_when_it_starts_and_ends_not_at_every_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = DatabaseOutage("worker", logging.getLogger("test.outage"), first=0.01, ceiling=0.02)
    with caplog.at_level(logging.WARNING, logger="test.outage"):
        for _ in range(5):
            await outage.pause(ConnectionRefusedError(111, "Connection refused"))
        assert outage.waiting and outage.retries == 5
        outage.over()
        outage.over()  # no outage any more: nothing to say
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "worker: the database is unreachable (ConnectionRefusedError" in messages[0]
    assert "worker: the database is reachable again" in messages[1] and "5 retries" in messages[1]
    assert not outage.waiting


async def test_a_long_outage_is_logged_again_every_log_every_seconds(caplog: pytest.LogCaptureFixture) -> None:
    outage = DatabaseOutage("worker", logging.getLogger("test.outage"), first=0.01, ceiling=0.01, log_every=0.1)
    with caplog.at_level(logging.WARNING, logger="test.outage"):
        started = asyncio.get_running_loop().time()
        while asyncio.get_running_loop().time() - started < 0.35:
            await outage.pause(ConnectionRefusedError(111, "Connection refused"))
    still = [r.getMessage() for r in caplog.records if "still unreachable" in r.getMessage()]
    assert 2 <= len(still) <= 4, still  # about one per 0.1 s after the first warning, not one per retry
    assert outage.retries > 10


async def test_the_runner_waits_for_an_unreachable_database_and_says_so(
    nc: NATS, unreachable_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    stop = asyncio.Event()
    runner = ProjectionRunner(nc.jetstream(), unreachable_pool, UsageProjection())
    with caplog.at_level(logging.WARNING):
        task = asyncio.create_task(runner.run(stop))
        await asyncio.sleep(1.7)  # the outage lasts 0.2 + 0.4 + 0.8 s: four attempts, which must not give up
        assert not task.done(), "the runner gave up while the database was unreachable"
        stop.set()
        await asyncio.wait_for(task, timeout=2)  # a stop ends the wait at once
    said = _warnings(caplog, "projection usage: the database is unreachable")
    assert len(said) == 1, "one warning when the wait starts, not one per retry"
    assert "waiting for it" in said[0] and "nothing is acknowledged" in said[0]


async def test_the_recovery_sweep_waits_for_an_unreachable_database_and_says_so(
    nc: NATS, unreachable_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    stop = asyncio.Event()
    recovery = UsageRecovery(nc.jetstream(), unreachable_pool, RecoveryConfig(grace=0.1))
    with caplog.at_level(logging.WARNING):
        task = asyncio.create_task(recovery.run(stop))
        await asyncio.sleep(1.0)  # the outage lasts several sweeps, which must not give up
        assert not task.done(), "the sweep gave up while the database was unreachable"
        stop.set()
        await asyncio.wait_for(task, timeout=2)
    assert len(_warnings(caplog, "usage recovery: the database is unreachable")) == 1


async def test_the_projections_process_waits_for_the_database_at_start(
    nats_server: object, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING):
        task = asyncio.create_task(run_projections(nats_server.bus("projections"), _nowhere(tmp_path), ["usage"], stop))
        await asyncio.sleep(1.0)  # the database stays away for several attempts, which must not give up
        assert not task.done(), "dai projections run exited because the database was not up yet"
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    assert len(_warnings(caplog, "projections: the database is unreachable")) == 1
