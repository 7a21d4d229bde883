"""Gateways whose clocks are off (libfaketime) still share one exact call limit, serve calls
with a short ttl, and say that their clock is off.

Each gateway here is a ``dai gateway`` process started with ``LD_PRELOAD`` of Debian's
libfaketime and ``FAKETIME="-30s"`` (or ``+2s`` …): its wall clock is off, its monotonic clock
is not (``FAKETIME_DONT_FAKE_MONOTONIC``), as on a host whose NTP is broken. The limit is
``LIMIT`` calls per window: an API key's (60 s), or a tenant plan's of 10 s, which keeps the
cases that need a window to pass short (the bound does not depend on the window's length).

Before lease windows were measured on the server's clock, the gateway ahead forgot the leases
of the gateway behind ``2 × skew`` seconds early: with 30 s of skew each way, at once.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import free_port
from democratic_ai.schemas import app_dsn

from support.client import http
from support.gateway import flood, gateway_ready, issue_key
from support.modules import Echo
from support.names import unique

LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(LIBFAKETIME is None, reason="needs libfaketime: apt-get install faketime"),
]

LIMIT = 40
SHORT_WINDOW = 10  # seconds: the plan of the tenant ``short_window_tenant``
LEASE = 1.0  # AdmissionConfig.lease_seconds of `dai gateway`


@pytest.fixture
def short_window_tenant() -> str:
    return unique("tenant")


@pytest.fixture
def gateway_env(
    nats_server: NatsServer, database_url: str, pool: asyncpg.Pool, tmp_path: Path, short_window_tenant: str
) -> dict[str, str]:
    """The environment of a `dai gateway` process: the gateway's bus role, this test's database,
    and a plans file with no call limit but for ``short_window_tenant``: LIMIT per SHORT_WINDOW s."""
    plans = tmp_path / "plans.json"
    plans.write_text(
        json.dumps(
            {
                "version": 1,
                "default_plan": "open",
                "assignments": {short_window_tenant: "short"},
                "plans": {"open": {}, "short": {"api_calls": {"limit": LIMIT, "window_seconds": SHORT_WINDOW}}},
            }
        )
    )
    return {
        **os.environ,
        **nats_server.environment("gateway"),
        "DATABASE_APP_URL": app_dsn(database_url),
        "DAI_LOG_LEVEL": "WARNING",
        "DAI_PLANS_FILE": str(plans),
    }


class SkewedGateway:
    def __init__(self, url: str, log: Path) -> None:
        self.url, self.log = url, log


@contextmanager
def skewed_gateway(env: dict[str, str], offset: int, log_dir: Path) -> Iterator[SkewedGateway]:
    """A `dai gateway` process whose wall clock is ``offset`` seconds off; its log goes to a file."""
    port = free_port()
    log = log_dir / f"gateway{offset:+d}.log"
    fake = {"LD_PRELOAD": LIBFAKETIME or "", "FAKETIME": f"{offset:+d}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "democratic_ai.ops.cli", "gateway", "--port", str(port)],
            env={**env, **fake},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield SkewedGateway(f"http://127.0.0.1:{port}", log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _admitted(results: list[tuple[str, int, dict[str, str], dict]]) -> int:
    statuses = Counter(status for _, status, _, _ in results)
    assert set(statuses) <= {200, 429}, statuses
    return statuses[200]


async def _until(moment: float) -> None:
    """Sleep until ``moment`` (``time.monotonic()``): the tests place calls at points of the windows."""
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


@pytest.mark.parametrize(("skew", "window"), [(2, SHORT_WINDOW), (30, SHORT_WINDOW), (30, 60)])
async def test_gateways_with_skewed_clocks_admit_at_most_the_limit_in_any_window(
    skew: int,
    window: int,
    nc: NATS,
    echo: Echo,
    gateway_env: dict[str, str],
    tmp_path: Path,
    short_window_tenant: str,
) -> None:
    if window == SHORT_WINDOW:
        key = await issue_key(nc, short_window_tenant)  # the tenant's plan: LIMIT per 10 s
    else:
        key = await issue_key(nc, unique("tenant"), rate_limit=LIMIT)  # the key's own: LIMIT per 60 s
    with ExitStack() as stack:
        behind = stack.enter_context(skewed_gateway(gateway_env, -skew, tmp_path))
        ahead = stack.enter_context(skewed_gateway(gateway_env, +skew, tmp_path))
        await asyncio.gather(gateway_ready(behind.url, key, timeout=60), gateway_ready(ahead.url, key, timeout=60))

        # A window's whole quota through the gateway behind...
        started = time.monotonic()
        first = _admitted(await flood([behind.url], key, 2 * LIMIT))
        ended = time.monotonic()
        # ...then as much again through the gateway ahead, at a moment when by its own clock
        # those leases have left the window (2 x skew early) but by the server's they have not.
        second_at = ended + max(0.5, window - 2 * skew + LEASE + 0.5)
        assert second_at < started + window + LEASE, "the first flood took too long to tell the clocks apart"
        await _until(second_at)
        second = _admitted(await flood([ahead.url], key, 2 * LIMIT))
        print(
            f"\n±{skew} s: {first} admitted behind, then {second} ahead {second_at - ended:.1f} s later"
            f" (limit {LIMIT} per {window} s)"
        )
        assert 0.9 * LIMIT <= first <= LIMIT
        assert first + second <= LIMIT
        if window > SHORT_WINDOW:
            return  # a minute is too long to wait for the next window

        # Once the window has passed on the server's clock, the quota is there again, for both.
        await _until(ended + window + LEASE + 1.0)
        again = _admitted(await flood([behind.url, ahead.url], key, 2 * LIMIT))
        print(f"a window later: {again} admitted through both")
        assert 0.9 * LIMIT <= again <= LIMIT


async def test_a_gateway_30_s_off_serves_short_ttl_calls_and_says_its_clock_is_off(
    nc: NATS, echo: Echo, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    key = await issue_key(nc, unique("tenant"))
    with ExitStack() as stack:
        gateways = {offset: stack.enter_context(skewed_gateway(gateway_env, offset, tmp_path)) for offset in (-30, 30)}
        await asyncio.gather(*(gateway_ready(g.url, key, timeout=60) for g in gateways.values()))
        for offset, gateway in gateways.items():
            started = time.monotonic()
            status, body = await http(
                "POST",
                f"{gateway.url}/v1/capabilities/test.echo/invoke?ttl=5",
                json={"text": "on time"},
                headers={"X-API-Key": key},
            )
            assert (status, body.get("result")) == (200, {"text": "on time"}), (offset, body)
            assert time.monotonic() - started < 2.0  # answered, not waited out

            status, ready = await http("GET", f"{gateway.url}/readyz")
            way = "behind" if offset < 0 else "ahead of"
            assert status == 200 and ready["status"] == "ready"
            assert f"30.0 s {way} the NATS server's" in ready["warnings"][0]
            assert ready["clock_skew_seconds"] == pytest.approx(offset, abs=0.5)
            assert f"s {way} the NATS server's" in gateway.log.read_text()  # and it logged so at start
