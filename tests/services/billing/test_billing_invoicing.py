"""Billing arithmetic without servers: the price list, rounding, proration, yearly plans, periods.

Every amount here is asserted in exact yen, computed by hand in the comment next to it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, strategies as st

from democratic_ai.contracts.billing_events import (
    PlanChanged,
    SubscriptionCancelled,
    SubscriptionStarted,
    decode_event,
    encode_event,
)
from democratic_ai.contracts.envelope import Meta
from democratic_ai.services.billing import (
    build_invoice,
    compute_invoice,
    duration,
    fold_subscription,
    format_money,
    round_line,
    tax_amount,
)
from democratic_ai.services.billing.periods import month_period, service_period
from democratic_ai.services.plans import InvalidPricing, load_plans

from support.paths import REPO

PRICES = load_plans()
STARTER = PRICES.terms("starter")
PRO = PRICES.terms("pro")
TOKYO = "Asia/Tokyo"
TEN_PERCENT = Decimal("0.10")
GIB = 1024**3
HOUR_MS = 3_600_000


def at(text: str) -> datetime:
    """An ISO time with its offset, as UTC."""
    return datetime.fromisoformat(text).astimezone(UTC)


def meta(text: str) -> Meta:
    return Meta(at=at(text))


def subscription(*events: object, tenant: str = "acme") -> object:
    return fold_subscription(tenant, [(n, e) for n, e in enumerate(events, start=1)])  # type: ignore[misc]


def charged(invoice: object) -> list:
    """The lines that cost something: base fees, and usage over a priced allowance."""
    return [line for line in invoice.lines if line.kind == "base_fee" or line.amount]  # type: ignore[attr-defined]


def started(when: str, plan: str = "starter", interval: str = "month", time_zone: str = TOKYO) -> SubscriptionStarted:
    return SubscriptionStarted(
        tenant_id="acme", meta=meta(when), terms=PRICES.terms(plan), interval=interval, time_zone=time_zone
    )


def test_starter_is_the_seed_pricing_tier() -> None:
    assert (STARTER.name, STARTER.currency) == ("Starter", "JPY")
    assert (STARTER.monthly_price, STARTER.yearly_price) == (Decimal("4900"), Decimal("49000"))
    usage = STARTER.usage
    assert (usage["api_calls"].included, usage["api_calls"].overage_price) == (100_000, Decimal("0.05"))
    assert (usage["compute_ms"].included * usage["compute_ms"].unit_size, usage["compute_ms"].overage_price) == (
        100 * HOUR_MS,
        Decimal("50"),
    )
    assert (
        usage["storage_bytes"].included * usage["storage_bytes"].unit_size,
        usage["storage_bytes"].overage_price,
    ) == (50 * GIB, Decimal("10"))
    assert STARTER.features == ("Email Support", "API Access", "Custom Modules")
    assert set(PRICES.prices) == {"free", "starter", "pro", "enterprise"}
    assert all(terms.currency for terms in PRICES.prices.values())


def test_pricing_uses_the_plan_ids_of_the_rate_limits(repo_root: Path) -> None:
    """Prices extend the plans of issue 4's plans.json: every priced plan must have limits."""
    limits = repo_root / "schemas" / "json" / "plans.json"
    if not limits.exists():
        pytest.skip("schemas/json/plans.json (metering's rate limits) is not in this tree yet")
    assert set(PRICES.prices) <= set(json.loads(limits.read_text())["plans"])


def test_a_bad_pricing_file_is_refused_with_its_reason(tmp_path: Path) -> None:
    bad = json.loads((REPO / "schemas/json/pricing.json").read_text())
    bad["plans"]["starter"]["monthly_price"] = 4900.0  # a float: money is never a float
    path = tmp_path / "pricing.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(InvalidPricing, match="monthly_price"):
        load_plans(pricing_file=path)
    bad["plans"]["starter"]["monthly_price"] = "4900"
    bad["plans"]["starter"]["currency"] = "XXX"
    path.write_text(json.dumps(bad))
    with pytest.raises(InvalidPricing, match="currency 'XXX'"):
        load_plans(pricing_file=path)


def test_rounding_rules() -> None:
    # Lines: half up to the minor unit, once per line.
    assert round_line(Decimal("2500.00"), "JPY") == 2500
    assert round_line(Decimal("0.15"), "JPY") == 0  # 3 calls × ¥0.05
    assert round_line(Decimal("0.5"), "JPY") == 1  # 10 calls × ¥0.05: a tie goes up
    assert round_line(Decimal("2.345"), "USD") == 235
    # Tax: down, once per invoice.
    assert tax_amount(7400, TEN_PERCENT) == 740
    assert tax_amount(7409, TEN_PERCENT) == 740
    assert tax_amount(7409, Decimal("0.08")) == 592  # 592.72
    assert format_money(8140, "JPY") == "¥8,140"


def test_the_seeds_example_starter_with_150000_calls() -> None:
    """Base ¥4,900 + 50,000 × ¥0.05 = ¥7,400; tax ⌊740⌋; total ¥8,140."""
    sub = subscription(started("2025-01-01T00:00:00+09:00"))
    invoice = build_invoice(sub, (2025, 1), {"api_calls": 150_000}, TEN_PERCENT, meta("2025-02-01T01:00:00+09:00"))
    assert invoice is not None
    assert [(line.kind, line.metric, line.quantity, line.unit_price, line.amount) for line in invoice.lines] == [
        ("base_fee", "", Decimal(1), Decimal("4900"), 4900),
        ("overage", "api_calls", Decimal(50_000), Decimal("0.05"), 2500),
        # Every metric of the plan has its line, with its allowance, even with nothing over it.
        ("overage", "compute_ms", Decimal(0), Decimal("50"), 0),
        ("overage", "storage_bytes", Decimal(0), Decimal("10"), 0),
    ]
    assert [(line.used, line.included) for line in invoice.lines[1:]] == [(150_000, 100_000), (0, 100), (0, 50)]
    assert (invoice.subtotal, invoice.tax, invoice.total) == (7400, 740, 8140)
    assert invoice.invoice_id == "acme-2025-01" and invoice.currency == "JPY"
    # The month is Tokyo's: it starts at 15:00 UTC the day before.
    assert (invoice.period_start, invoice.period_end) == (
        at("2024-12-31T15:00:00+00:00"),
        at("2025-01-31T15:00:00+00:00"),
    )
    assert [line.description for line in invoice.lines] == [
        "Starter plan (monthly), 2025-01-01 00:00 – 2025-02-01 00:00 (Asia/Tokyo)",
        "API calls: 150,000 calls used, 100,000 calls included, 50,000 calls over × ¥0.05 per call",
        "Compute time: 0 hours used, 100 hours included, 0 hours over × ¥50 per hour",
        "Storage: 0 GB stored, 50 GB included, 0 GB over × ¥10 per GB",
    ]


def test_compute_and_storage_overage_in_hours_and_gigabytes() -> None:
    sub = subscription(started("2025-03-01T00:00:00+09:00"))
    usage = {"api_calls": 99_999, "compute_ms": 130 * HOUR_MS + HOUR_MS // 2, "storage_bytes": 52 * GIB + GIB // 4}
    invoice = build_invoice(sub, (2025, 3), usage, TEN_PERCENT, meta("2025-04-02T00:00:00+09:00"))
    assert invoice is not None
    by_metric = {line.metric: line for line in charged(invoice) if line.kind == "overage"}
    assert set(by_metric) == {"compute_ms", "storage_bytes"}  # calls stayed within the allowance
    calls = invoice.lines[1]
    assert (calls.metric, calls.quantity, calls.amount, calls.used) == ("api_calls", 0, 0, 99_999)
    assert by_metric["compute_ms"].description == (
        "Compute time: 130.5 hours used, 100 hours included, 30.5 hours over × ¥50 per hour"
    )
    assert (by_metric["compute_ms"].quantity, by_metric["compute_ms"].amount) == (Decimal("30.5"), 1525)  # × ¥50
    assert (by_metric["storage_bytes"].quantity, by_metric["storage_bytes"].amount) == (Decimal("2.25"), 23)  # 22.5 ↑
    assert (invoice.subtotal, invoice.tax, invoice.total) == (4900 + 1525 + 23, 644, 7092)


def test_a_plan_change_mid_month_is_prorated_by_the_second() -> None:
    """Starter from 1 Jan, Pro from 16 Jan 00:00 Tokyo: 15/31 × ¥4,900 = 2,370.97 → ¥2,371;
    16/31 × ¥19,800 = 10,219.35 → ¥10,219. Pro's allowance covers the month's calls."""
    sub = subscription(
        started("2025-01-01T00:00:00+09:00"),
        PlanChanged(tenant_id="acme", meta=meta("2025-01-16T00:00:00+09:00"), terms=PRO, interval="month"),
    )
    invoice = build_invoice(sub, (2025, 1), {"api_calls": 150_000}, TEN_PERCENT, meta("2025-02-02T00:00:00+09:00"))
    assert invoice is not None
    assert [(line.plan_id, line.amount) for line in charged(invoice)] == [("starter", 2371), ("pro", 10219)]
    assert invoice.lines[0].quantity == Decimal("0.483871")  # 15/31, shown to six places
    assert invoice.lines[0].description.endswith("2025-01-01 00:00 – 2025-01-16 00:00 (Asia/Tokyo), 15 days of 31 days")
    assert {line.plan_id for line in invoice.lines if line.metric} == {"pro"}  # the plan in force at the end
    assert (invoice.subtotal, invoice.tax, invoice.total) == (12590, 1259, 13849)


def test_subscribing_mid_month_pays_from_that_second_and_cancelling_until_it() -> None:
    sub = subscription(
        started("2025-04-10T12:00:00+09:00"),
        SubscriptionCancelled(tenant_id="acme", meta=meta("2025-05-20T00:00:00+09:00")),
    )
    april = build_invoice(sub, (2025, 4), {}, TEN_PERCENT, meta("2025-05-01T02:00:00+09:00"))
    may = build_invoice(sub, (2025, 5), {}, TEN_PERCENT, meta("2025-06-01T02:00:00+09:00"))
    june = build_invoice(sub, (2025, 6), {}, TEN_PERCENT, meta("2025-07-01T02:00:00+09:00"))
    assert april is not None and may is not None and june is None
    # April: 20.5 of 30 days × ¥4,900 = 3,348.33 → ¥3,348. May: 19 of 31 days = 3,003.23 → ¥3,003.
    assert [line.amount for line in charged(april)] == [3348]
    assert [line.amount for line in charged(may)] == [3003]
    assert april.lines[0].description.endswith(", 20 days 12 hours of 30 days")
    assert may.lines[0].description.endswith(", 19 days of 31 days")


def test_a_yearly_plan_runs_twelve_tokyo_months_and_is_billed_when_its_year_ends() -> None:
    sub = subscription(started("2025-04-01T00:00:00+09:00", interval="year"))
    year = service_period(at("2025-09-15T00:00:00+09:00"), "year", (2025, 4), TOKYO)
    assert (year.start, year.end) == (at("2025-04-01T00:00:00+09:00"), at("2026-04-01T00:00:00+09:00"))
    # Months inside the year carry only their usage past the (monthly) allowance.
    may = build_invoice(sub, (2025, 5), {"api_calls": 100_010}, TEN_PERCENT, meta("2025-06-01T02:00:00+09:00"))
    assert may is not None and [(line.kind, line.amount) for line in charged(may)] == [("overage", 1)]
    # A month inside the year with nothing over its allowance has nothing to bill.
    assert build_invoice(sub, (2025, 6), {"api_calls": 10}, TEN_PERCENT, meta("2025-07-01T02:00:00+09:00")) is None
    # The year's last month carries the yearly fee, whole.
    march = build_invoice(sub, (2026, 3), {}, TEN_PERCENT, meta("2026-04-01T02:00:00+09:00"))
    assert march is not None
    assert [(line.unit, line.quantity, line.amount) for line in charged(march)] == [("year", Decimal(1), 49000)]
    assert (march.subtotal, march.tax, march.total) == (49000, 4900, 53900)
    assert march.lines[0].service_start == at("2025-04-01T00:00:00+09:00")


def test_an_upgrade_within_the_year_keeps_the_year_and_prorates_both_fees() -> None:
    """Yearly Starter from 1 Apr 2025, yearly Pro from 1 Oct 2025 (183 of 365 days in):
    ¥49,000 × 183/365 = 24,567.12 → ¥24,567, billed in September; ¥198,000 × 182/365 =
    98,728.77 → ¥98,729, billed in March 2026 when the (same) year ends."""
    sub = subscription(
        started("2025-04-01T00:00:00+09:00", interval="year"),
        PlanChanged(tenant_id="acme", meta=meta("2025-10-01T00:00:00+09:00"), terms=PRO, interval="year"),
    )
    september = build_invoice(sub, (2025, 9), {}, TEN_PERCENT, meta("2025-10-02T00:00:00+09:00"))
    march = build_invoice(sub, (2026, 3), {}, TEN_PERCENT, meta("2026-04-02T00:00:00+09:00"))
    assert september is not None and march is not None
    assert [(line.plan_id, line.amount) for line in charged(september)] == [("starter", 24567)]
    assert [(line.plan_id, line.amount) for line in charged(march)] == [("pro", 98729)]


def test_months_follow_the_tenants_time_zone_across_daylight_saving() -> None:
    march = month_period((2025, 3), "America/New_York")
    # EST → EDT on 9 March: the month is an hour shorter than 31 × 24 h, and starts at 05:00 UTC.
    assert march.start == at("2025-03-01T05:00:00+00:00") and march.end == at("2025-04-01T04:00:00+00:00")
    sub = subscription(started("2025-03-01T00:00:00-05:00", time_zone="America/New_York"))
    invoice = build_invoice(sub, (2025, 3), {}, TEN_PERCENT, meta("2025-04-02T00:00:00-04:00"))
    assert invoice is not None and [line.amount for line in charged(invoice)] == [4900]  # a whole month, exactly
    assert invoice.lines[0].description == (
        "Starter plan (monthly), 2025-03-01 00:00 – 2025-04-01 00:00 (America/New_York)"
    )


@pytest.mark.parametrize(
    ("span", "text"),
    [
        ("2678400", "31 days"),
        ("2573735.494916", "29 days 18 hours"),
        ("1296000", "15 days"),
        ("2674800", "30 days 23 hours"),  # March in New York: an hour is lost to daylight saving
        ("90000", "1 day 1 hour"),
        ("7200", "2 hours"),
        ("3599", "59 minutes"),
        ("60", "1 minute"),
        ("59.9", "less than a minute"),
        ("31536000", "365 days"),
    ],
)
def test_durations_read_in_days_and_hours(span: str, text: str) -> None:
    assert duration(Decimal(span)) == text


def test_the_month_so_far_prorates_the_running_fee_to_that_instant() -> None:
    """Starter since 1 January; on 10 January 12:00 Tokyo, 9.5 of 31 days: ¥4,900 × 9.5/31 =
    1,501.61 → ¥1,502; 3 calls (¥0.15 over nothing: within the allowance)."""
    sub = subscription(started("2025-01-01T00:00:00+09:00"))
    now = at("2025-01-10T12:00:00+09:00")
    so_far = compute_invoice(sub, (2025, 1), {"api_calls": 3}, TEN_PERCENT, Meta(at=now), until=now)
    assert so_far is not None
    assert [(line.metric, line.amount) for line in so_far.lines] == [
        ("", 1502),
        ("api_calls", 0),
        ("compute_ms", 0),
        ("storage_bytes", 0),
    ]
    assert so_far.lines[0].service_end == now and so_far.lines[0].quantity == Decimal("0.306452")
    assert so_far.lines[0].description.endswith(
        "2025-01-01 00:00 – 2025-01-10 12:00 (Asia/Tokyo), 9 days 12 hours of 31 days"
    )
    assert (so_far.subtotal, so_far.tax, so_far.total) == (1502, 150, 1652)
    # Once the month is over, "so far" is the whole month: the invoice closing it issues.
    later = meta("2025-02-01T01:00:00+09:00")
    assert compute_invoice(sub, (2025, 1), {"api_calls": 3}, TEN_PERCENT, later, until=later.at) == build_invoice(
        sub, (2025, 1), {"api_calls": 3}, TEN_PERCENT, later
    )


@given(
    cut=st.integers(min_value=1, max_value=31 * 86_400 - 1),  # seconds into Tokyo's January 2025
    change=st.one_of(st.none(), st.integers(min_value=1, max_value=31 * 86_400 - 1)),
    calls=st.integers(min_value=0, max_value=3_000_000),
    yearly=st.booleans(),
)
def test_the_month_so_far_is_the_month_as_if_the_plan_ended_then(
    cut: int, change: int | None, calls: int, yearly: bool
) -> None:
    """For any instant of the month, any plan change before it and any usage: the invoice so far
    is the invoice of the same month had the subscription been cancelled at that instant. (A
    yearly plan here began in February 2024, so January is its year's last month.)"""
    interval = "year" if yearly else "month"
    first = "2024-02-01T00:00:00+09:00" if yearly else "2025-01-01T00:00:00+09:00"
    month_start = at("2025-01-01T00:00:00+09:00")
    until = month_start + timedelta(seconds=cut)
    events: list[object] = [started(first, interval=interval)]
    if change is not None and change < cut:
        events.append(
            PlanChanged(
                tenant_id="acme", meta=Meta(at=month_start + timedelta(seconds=change)), terms=PRO, interval=interval
            )
        )
    usage = {"api_calls": calls, "compute_ms": calls * 7, "storage_bytes": calls * 40_000}
    so_far = compute_invoice(subscription(*events), (2025, 1), usage, TEN_PERCENT, Meta(at=until), until=until)
    ended = compute_invoice(
        subscription(*events, SubscriptionCancelled(tenant_id="acme", meta=Meta(at=until))),
        (2025, 1),
        usage,
        TEN_PERCENT,
        Meta(at=until),
    )
    assert so_far is not None and so_far == ended


def test_the_month_so_far_of_a_yearly_plan_holds_its_fee_only_in_the_years_last_month() -> None:
    sub = subscription(started("2025-04-01T00:00:00+09:00", interval="year"))
    september = compute_invoice(
        sub, (2025, 9), {}, TEN_PERCENT, meta("2025-09-15T00:00:00+09:00"), until=at("2025-09-15T00:00:00+09:00")
    )
    assert september is not None and september.total == 0  # the year is billed when it ends
    assert [line.kind for line in september.lines] == ["overage"] * 3
    # On 16 March 2026 the year's fee so far: 349 of 365 days × ¥49,000 = 46,852.05 → ¥46,852.
    march = compute_invoice(
        sub, (2026, 3), {}, TEN_PERCENT, meta("2026-03-16T00:00:00+09:00"), until=at("2026-03-16T00:00:00+09:00")
    )
    assert march is not None and [(line.unit, line.amount) for line in charged(march)] == [("year", 46852)]
    assert march.lines[0].description.endswith(", 349 days of 365 days")


def test_a_free_plan_shows_its_allowances_but_issues_nothing() -> None:
    sub = subscription(started("2025-01-01T00:00:00+09:00", plan="free"))
    usage = {"api_calls": 1500, "storage_bytes": GIB // 2}
    assert build_invoice(sub, (2025, 1), usage, TEN_PERCENT, meta("2025-02-02T00:00:00+09:00")) is None
    so_far = compute_invoice(
        sub, (2025, 1), usage, TEN_PERCENT, meta("2025-01-20T00:00:00+09:00"), until=at("2025-01-20T00:00:00+09:00")
    )
    assert so_far is not None and so_far.total == 0
    assert [line.description for line in so_far.lines] == [
        "API calls: 1,500 calls used, 1,000 calls included, 500 calls over (not billed past the allowance)",
        "Compute time: 0 hours used, 1 hour included, 0 hours over (not billed past the allowance)",
        "Storage: 0.5 GB stored, 1 GB included, 0 GB over (not billed past the allowance)",
    ]


def test_a_v1_invoice_event_decodes_without_a_seller_and_v2_with_one() -> None:
    from democratic_ai.contracts.billing_events import INVOICE_VERSION, Seller

    sub = subscription(started("2025-01-01T00:00:00+09:00"))
    seller = Seller(name="Democratic AI K.K.", registration_number="T1234567890123")
    invoice = build_invoice(sub, (2025, 1), {}, TEN_PERCENT, meta("2025-02-02T00:00:00+09:00"), seller=seller)
    assert invoice is not None and (invoice.v, invoice.seller) == (INVOICE_VERSION, seller) == (2, seller)
    document = msgspec.json.decode(encode_event(invoice))
    del document["seller"]
    for line in document["lines"]:
        line.pop("used"), line.pop("included")
    document["v"] = 1
    old = decode_event(msgspec.json.encode(document))
    assert (old.v, old.seller, {line.used for line in old.lines}) == (1, None, {None})


def test_invoice_events_carry_money_as_strings_and_round_trip() -> None:
    sub = subscription(started("2025-01-01T00:00:00+09:00"))
    invoice = build_invoice(sub, (2025, 1), {"api_calls": 150_000}, TEN_PERCENT, meta("2025-02-02T00:00:00+09:00"))
    assert invoice is not None
    wire = encode_event(invoice)
    document = msgspec.json.decode(wire)
    assert document["tax_rate"] == "0.10" and document["lines"][1]["unit_price"] == "0.05"
    assert (document["lines"][1]["used"], document["lines"][1]["included"]) == ("150000", 100_000)
    assert b"." not in msgspec.json.encode(document["total"])  # integers, not floats
    assert decode_event(wire) == invoice


def test_the_billing_package_exports_what_it_lists() -> None:
    import democratic_ai.services.billing as billing

    assert billing.__all__ == sorted(billing.__all__, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    assert all(hasattr(billing, name) for name in billing.__all__)
