"""The four rate-limit algorithms, as functions of the time passed in: nothing here sleeps."""

from __future__ import annotations

import math
import random

import pytest

from democratic_ai.services.metering import FixedWindow, Grant, LeakyBucket, SlidingLog, TokenBucket
from democratic_ai.services.plans import InvalidPlans, PlanBook, load_plans

T0 = 1_700_000_000.0


def test_sliding_log_counts_every_call_of_the_last_window() -> None:
    log = SlidingLog(window=60)
    for i in range(10):
        log.add(Grant(T0 + i, T0 + i, 1))
    assert log.used(T0 + 9) == 10
    assert log.remaining(T0 + 9, limit=10) == 0
    # The first call leaves the window 60 s after it was made, and only then is there room.
    assert log.retry_after(T0 + 9, limit=10) == pytest.approx(51)
    assert log.used(T0 + 60.5) == 9
    assert log.remaining(T0 + 60.5, limit=10) == 1
    assert log.used(T0 + 70) == 0 and len(log) == 0


def test_sliding_log_has_no_boundary_burst_unlike_a_fixed_window() -> None:
    """10 calls at the end of one minute and 10 at the start of the next: a fixed window of
    10/min admits all 20 within two seconds; the sliding window admits only the first 10."""
    limit = 10
    minute = math.floor(T0 / 60) * 60
    log = SlidingLog(window=60)
    fixed = FixedWindow.starting(limit, 60, minute)
    admitted_sliding = admitted_fixed = 0
    for t in [minute + 59.0 + i * 0.01 for i in range(10)] + [minute + 60.5 + i * 0.01 for i in range(10)]:
        if log.remaining(t, limit) >= 1:
            log.add(Grant(t, t, 1))
            admitted_sliding += 1
        if fixed.allows(1, t):
            fixed = fixed.add(1, t)
            admitted_fixed += 1
    assert admitted_sliding == 10
    assert admitted_fixed == 20


def test_sliding_log_leases_never_let_a_window_exceed_the_limit() -> None:
    """Random leases granted by the rule of admission.py; random call times inside each lease.
    Every window of 60 s, checked at every call, holds at most the limit."""
    rng = random.Random(7)
    limit, window, lease = 50, 60.0, 2.0
    log = SlidingLog(window)
    calls: list[float] = []
    now = T0
    for sequence in range(1, 400):
        now += rng.expovariate(2.0)
        n = min(log.remaining(now, limit), rng.randint(1, 8))
        if n <= 0:
            continue
        log.add(Grant(now, now + lease, n, sequence))
        used = rng.randint(0, n)
        calls += [now + rng.uniform(0, lease) for _ in range(used)]
        log.give_back(sequence, n - used)
    calls.sort()
    worst = max(sum(1 for c in calls if t - window < c <= t) for t in calls)
    assert worst <= limit
    assert worst >= limit * 0.6  # and the limit was actually approached


def test_sliding_log_give_back_frees_unused_calls() -> None:
    log = SlidingLog(window=60)
    log.add(Grant(T0, T0 + 1, 10, sequence=5))
    assert log.remaining(T0 + 2, limit=10) == 0
    log.give_back(5, 7)
    assert log.remaining(T0 + 2, limit=10) == 7
    log.give_back(99, 3)  # an unknown lease: nothing changes
    assert log.used(T0 + 2) == 3
    assert log.frees_all_in(T0 + 2) == pytest.approx(59)
    assert log.retry_after(T0 + 2, limit=10, need=11) == math.inf


def test_token_bucket_allows_a_burst_then_the_refill_rate() -> None:
    bucket = TokenBucket.full(capacity=1000, rate=100, now=T0)  # 1 s of compute, 100 ms per second
    for _ in range(4):
        assert bucket.allows(T0)
        bucket = bucket.spend(300, T0)
    assert bucket.available(T0) == -200  # post-paid: the last call went into debt
    assert not bucket.allows(T0)
    assert bucket.retry_after(T0) == pytest.approx(2.01)
    assert not bucket.allows(T0 + 2.0)
    assert bucket.allows(T0 + 2.02)
    assert bucket.available(T0 + 100) == 1000  # never more than the capacity
    deep = bucket.spend(10_000, T0)
    assert deep.available(T0) == -1000  # debt is capped at one capacity…
    assert deep.horizon() == 20  # …so 20 s after anything the bucket is full again
    assert deep.available(T0 + deep.horizon()) == 1000


def test_token_bucket_takes_late_events_without_refilling_backwards() -> None:
    bucket = TokenBucket.full(capacity=100, rate=10, now=T0).spend(50, T0 + 5)
    late = bucket.spend(30, T0 + 1)  # an event from another replica, stamped earlier
    assert late.at == T0 + 5 and late.tokens == 20


def test_leaky_bucket_smooths_bandwidth() -> None:
    bucket = LeakyBucket.empty(capacity=1000, rate=100, now=T0)  # 100 bytes per second drain
    assert bucket.allows(800, T0)
    bucket = bucket.add(800, T0)
    assert not bucket.allows(300, T0)
    assert bucket.retry_after(300, T0) == pytest.approx(1.0)
    assert bucket.allows(300, T0 + 1.0)
    assert bucket.drained(T0 + 100).level == 0
    assert bucket.retry_after(1001, T0) == math.inf
    assert bucket.add(5000, T0).level == 2000  # what the answer brought is added, up to twice the capacity


def test_fixed_window_resets_on_the_boundary_and_ignores_frees() -> None:
    day = 86_400
    window = FixedWindow.starting(limit=1000, size=day, now=T0)
    window = window.add(900, T0 + 10)
    assert not window.allows(200, T0 + 20)
    assert window.remaining(T0 + 20) == 100
    window = window.add(-500, T0 + 30)  # freed space gives no quota back within the window
    assert window.remaining(T0 + 30) == 100
    next_day = window.start + day
    assert window.resets_in(T0 + 20) == pytest.approx(next_day - T0 - 20)
    assert window.allows(1000, next_day) and window.current(next_day).used == 0
    stale = window.current(next_day).add(400, T0)  # a write of the previous day arrives late
    assert stale.used == 0


def test_configuration_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0, 1, 0, T0)
    with pytest.raises(ValueError, match="positive"):
        SlidingLog(0)
    book = load_plans()
    assert book.plan_of("anyone").name == "free" and book.plan_of("system").name == "unlimited"
    assert book.plan_of("system").api_calls is None
    with pytest.raises(InvalidPlans, match="does not define"):
        PlanBook(book.plans, "gold")
    with pytest.raises(InvalidPlans, match="no plan"):
        book.assign("acme", "gold")


def test_plans_file_errors_name_the_problem(tmp_path: object) -> None:
    from pathlib import Path

    bad = Path(str(tmp_path)) / "plans.json"
    bad.write_text('{"version": 1, "default_plan": "free", "plans": {"free": {"api_calls": {"limit": "many"}}}}')
    with pytest.raises(InvalidPlans, match=r"api_calls.limit"):
        load_plans(bad)
    bad.write_text(
        '{"version": 1, "default_plan": "free", "plans": {"free": {"compute_ms": {"capacity": 0,'
        ' "refill_per_second": 1}}}}'
    )
    with pytest.raises(InvalidPlans, match="positive capacity"):
        load_plans(bad)
