"""The one clock for shared time: the NATS server's, read from its stamps and carried on the
monotonic clock (contracts/server_clock.py), and lease windows measured on it."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, tzinfo

import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts.server_clock import SKEW_WARNING_SECONDS, ServerClock
from democratic_ai.contracts.usage_events import MeterConsumed
from democratic_ai.services.identity import KeyEncryptionKey, KeyRing
from democratic_ai.services.metering import Plan, PlanBook
from democratic_ai.services.metering.algorithms import Grant, SlidingLog
from democratic_ai.services.metering.meters import Meters
from democratic_ai.services.plans import ComputeLimit


class _Clocks:
    """A monotonic and a wall clock the test moves by hand."""

    def __init__(self, wall_offset: float = 0.0) -> None:
        self.mono = 1_000.0
        self.wall_offset = wall_offset

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return 1_800_000_000.0 + self.mono + self.wall_offset


def _clock(clocks: _Clocks, drift: float = 0.0) -> ServerClock:
    return ServerClock(monotonic=clocks.monotonic, wall=clocks.wall, drift=drift)


def test_the_server_time_is_the_best_stamp_carried_forward_on_the_monotonic_clock() -> None:
    clocks = _Clocks()
    clock = _clock(clocks)
    assert not clock.synced and clock.now() == clocks.wall()  # nothing seen yet: this host's clock
    clock.observe(5_000.0)  # a live stamp
    clocks.mono += 2.5
    assert clock.now() == pytest.approx(5_002.5)
    clock.observe(4_000.0)  # a replayed old message says less: it is a looser bound, ignored
    assert clock.now() == pytest.approx(5_002.5)
    clock.observe(5_002.6)  # a stamp that arrived quicker tightens it
    clocks.mono += 1.0
    assert clock.now() == pytest.approx(5_003.6)


def test_a_carried_bound_decays_by_the_drift_allowance() -> None:
    clocks = _Clocks()
    clock = _clock(clocks, drift=1e-3)
    clock.observe(5_000.0)
    clocks.mono += 1_000.0
    assert clock.now() == pytest.approx(5_999.0)  # 1 s less after 1,000 s: it lags, never leads


@pytest.mark.parametrize(("offset", "warned"), [(0.0, False), (1.5, False), (-2.5, True), (30.0, True)])
def test_a_clock_far_from_the_servers_is_named_and_logged_once(
    offset: float, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    clocks = _Clocks(wall_offset=offset)
    clock = _clock(clocks)
    assert clock.skew() is None and clock.problem() is None
    clock.observe(clocks.wall() - offset)  # the server is on time; this host is ``offset`` off
    assert clock.skew() == pytest.approx(offset)
    with caplog.at_level(logging.INFO, logger="democratic_ai.contracts.server_clock"):
        clock.check()
        clock.check()
    problem = clock.problem()
    assert (problem is not None) is warned
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert f"{abs(offset):.1f} s {'ahead of' if offset > 0 else 'behind'}" in problem
        clocks.wall_offset = 0.0  # NTP fixed it
        with caplog.at_level(logging.INFO, logger="democratic_ai.contracts.server_clock"):
            assert clock.check() is None
        assert "agrees with the NATS server's again" in caplog.records[-1].getMessage()
    assert abs(offset) <= SKEW_WARNING_SECONDS or warned


async def test_sync_reads_the_servers_time_from_the_jetstream_api(nc: NATS) -> None:
    clock = ServerClock()
    await clock.sync(nc, "RATELIMIT")
    assert clock.synced
    skew = clock.skew()
    assert skew is not None and abs(skew) < 0.5  # same host: the same clock, within a round trip


def test_a_restamped_grant_is_forgotten_by_its_new_end() -> None:
    log = SlidingLog(window=10)
    log.add(Grant(100.0, 101.0, 5, sequence=7))
    log.add(Grant(100.5, 101.5, 3, sequence=8))
    log.restamp(7, 104.0, 105.0)  # the log's stamp came later than the estimate
    log.restamp(99, 0.0, 0.0)  # unknown: nothing
    # Unstamped, both would be gone at 112; the first now ends at 105, and the one behind it
    # waits with it (forgetting goes in log order: late, never early).
    assert log.used(112.0) == 8
    assert log.frees_all_in(112.0) == pytest.approx(3.0)
    assert log.used(115.0) == 0


def test_a_meter_event_from_a_clock_ahead_does_not_stall_a_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another replica 30 s ahead tells what a tenant used; this replica's bucket still refills
    by its own clock from now, not from 30 s in the future."""
    now = [1_800_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    plans = PlanBook({"p": Plan(compute_ms=ComputeLimit(capacity=10, refill_per_second=1.0))}, default_plan="p")
    meters = Meters(None, plans, replica="here")  # type: ignore[arg-type]  # folding needs no connection
    meters.apply_remote(
        MeterConsumed(
            tenant_id="acme",
            replica="ahead",
            compute_ms=10,
            bandwidth_bytes=0,
            since=now[0] + 29.0,
            until=now[0] + 30.0,
        )
    )
    assert meters.check("acme", 0, now[0]) is not None  # used up…
    now[0] += 2.0
    assert meters.check("acme", 0, now[0]) is None  # …and refilled two seconds later


def _clock_off_by(seconds: float) -> type[datetime]:
    """``datetime`` as seen on a host whose clock is ``seconds`` off."""

    class Shifted(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
            return datetime.now(tz) + timedelta(seconds=seconds)

    return Shifted


async def test_a_token_issued_by_a_gateway_whose_clock_is_ahead_is_accepted(
    nc: NATS, kek: KeyEncryptionKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gateway A's clock is 30 s ahead: its fresh access token says it was issued 30 s from now.
    Gateway B still accepts it (and still refuses an expired one)."""
    from democratic_ai.services.identity import tokens

    ring = KeyRing(kek)
    await ring.start(nc.jetstream())
    try:
        with monkeypatch.context() as patch:
            patch.setattr(tokens, "datetime", _clock_off_by(30))
            fresh, jti, _ = ring.issue({"sub": "u-1", "tenant_id": "acme"})
            patch.setattr(tokens, "datetime", _clock_off_by(-tokens.ACCESS_TOKEN_TTL.total_seconds() - 60))
            expired, _, _ = ring.issue({"sub": "u-1", "tenant_id": "acme"})
        assert ring.verify(fresh).jti == jti
        with pytest.raises(tokens.InvalidToken, match="expired"):
            ring.verify(expired)
    finally:
        await ring.stop()
