"""An invoice, computed from the log alone: a pure function of the subscription and the usage.

Every tenant with a subscription gets one invoice per calendar month of its time zone. What a
month's invoice holds:

* **Base fees, in arrears.** A tenure is cut into *pieces*, one per service period it covers
  (a calendar month for monthly plans; the year counted from the anchor month for yearly
  ones). A piece is billed on the invoice of the month in which it ends, at

      fee = price × seconds(piece) / seconds(service period)

  in exact ``Decimal`` seconds, rounded half up once. A whole month is exactly the monthly
  price; a plan changed on the 16th of a 31-day month pays 15/31 of the old price and 16/31 of
  the new one. A yearly fee appears on the invoice of the year's last month (or of the month
  the tenure ended, prorated). No piece is billed before it has ended, so there are no credits
  and an invoice is never negative.
* **Usage against the allowance**, one line for every metric the plan prices, over or not: the
  plan in force at the end of the month (the last tenure that overlaps it) sets the monthly
  allowance and the overage price for the month's whole usage — from the first instant of the
  month the tenant was subscribed to the last. ``overage = max(0, used − included)``;
  ``amount = overage × price ÷ unit_size``, rounded half up (¥0 when nothing is over, or when
  the plan does not bill past its allowance). Storage is the bytes held at the end of that window.
* **Tax** on the subtotal, rounded down (:mod:`.money`).
* **The seller** (:mod:`.seller`) as configured when the invoice is issued.

A month with no base fee and nothing billable over an allowance has no invoice.

Only events recorded before the month ended are read, so closing a month later, or again after
a rebuild, yields the same invoice.

**The month so far** (:func:`compute_invoice` with ``until``) is the same computation cut at an
instant: the piece of service running then is billed up to it, prorated like any piece, and
usage is counted up to it. It is what the month's invoice would be if the subscription ended at
that instant — the upcoming invoice of ``GET /v1/invoices/upcoming``.

Lines are written as an invoice reads, and the text is part of the issued event (it is also
what Stripe's invoice items say): a prorated fee names its share as a duration in days and
hours (``29 days 18 hours of 31 days``) — the exact fraction is its ``quantity`` — and an
invoice already issued keeps the words it was issued with.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from democratic_ai.contracts.billing_events import InvoiceIssued, InvoiceLine, MeteredPrice, PlanTerms, Seller
from democratic_ai.contracts.envelope import Meta
from democratic_ai.services.plans import BILLED_METRICS

from .money import exact, format_price, round_line, tax_amount
from .periods import Month, Period, month_period, seconds, service_period, zone
from .seller import DEFAULT_SELLER
from .subscription import Subscription, Tenure

__all__ = [
    "UsageWindow",
    "build_invoice",
    "compute_invoice",
    "duration",
    "invoice_id",
    "period_id",
    "quantity_text",
    "usage_window",
]

_LABELS = {"api_calls": "API calls", "compute_ms": "Compute time", "storage_bytes": "Storage"}
_VERBS = {"storage_bytes": "stored"}  # storage is what is held, not what was used up
_DISPLAY = Decimal("0.000001")


def period_id(month: Month) -> str:
    return f"{month[0]:04d}-{month[1]:02d}"


def invoice_id(tenant_id: str, month: Month) -> str:
    """Deterministic: the same tenant and month always name the same invoice."""
    return f"{tenant_id}-{period_id(month)}"


@dataclass(frozen=True, slots=True)
class UsageWindow:
    """The part of a month whose usage is billed, and the terms it is billed on."""

    start: datetime
    end: datetime
    terms: PlanTerms


@dataclass(frozen=True, slots=True)
class _Piece:
    tenure: Tenure
    service: Period
    start: datetime
    end: datetime


def usage_window(subscription: Subscription, period: Period, until: datetime | None = None) -> UsageWindow | None:
    """From the first instant of ``period`` the tenant was subscribed to the last (or to ``until``);
    ``None`` if never."""
    end_of = period.end if until is None else min(period.end, until)
    overlapping = [t for t in subscription.tenures if t.start < end_of and (t.end is None or t.end > period.start)]
    if not overlapping:
        return None
    last_end = overlapping[-1].end
    return UsageWindow(
        start=max(period.start, overlapping[0].start),
        end=end_of if last_end is None else min(end_of, last_end),
        terms=overlapping[-1].terms,
    )


def _pieces(subscription: Subscription, period: Period, until: datetime | None = None) -> Iterator[_Piece]:
    """The pieces of service that end within ``period`` (start exclusive, end inclusive); with
    ``until``, the one running then is cut there and none after it is begun."""
    for tenure in subscription.tenures:
        cursor = tenure.start
        while cursor < period.end and (until is None or cursor < until):
            service = service_period(cursor, tenure.interval, tenure.anchor, tenure.time_zone)
            end = service.end if tenure.end is None else min(tenure.end, service.end)
            if end > period.end:
                break  # still running when the month ends: a later invoice bills it
            if until is not None and end > until:
                end = until  # the piece so far
            if end > period.start and end > cursor:
                yield _Piece(tenure, service, cursor, end)
            if tenure.end is not None and end >= tenure.end:
                break
            cursor = service.end


def _local(at: datetime, time_zone: str) -> str:
    return at.astimezone(zone(time_zone)).strftime("%Y-%m-%d %H:%M")


def _plural(count: int | Decimal, word: str) -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


def duration(span: Decimal) -> str:
    """``span`` seconds as an invoice says it: ``31 days``, ``29 days 18 hours``, ``5 hours``;
    whole days and hours, rounded down (the exact share is the line's quantity), and minutes
    only for a span under an hour."""
    days, rest = divmod(int(span), 86_400)
    hours, rest = divmod(rest, 3_600)
    parts = ([_plural(days, "day")] if days else []) + ([_plural(hours, "hour")] if hours else [])
    if parts:
        return " ".join(parts)
    minutes = rest // 60
    return _plural(minutes, "minute") if minutes else "less than a minute"


def _base_fee(piece: _Piece, currency: str) -> InvoiceLine | None:
    terms, interval = piece.tenure.terms, piece.tenure.interval
    price = terms.monthly_price if interval == "month" else terms.yearly_price
    if price == 0:
        return None
    used, whole = seconds(piece.end - piece.start), seconds(piece.service.end - piece.service.start)
    fraction = exact.divide(used, whole)
    time_zone = piece.tenure.time_zone
    description = (
        f"{terms.name} plan ({'monthly' if interval == 'month' else 'yearly'}),"
        f" {_local(piece.start, time_zone)} – {_local(piece.end, time_zone)} ({time_zone})"
    )
    if used != whole:
        description += f", {duration(used)} of {duration(whole)}"
    return InvoiceLine(
        kind="base_fee",
        description=description,
        plan_id=terms.plan_id,
        quantity=Decimal(1) if used == whole else fraction.quantize(_DISPLAY, rounding=ROUND_HALF_UP),
        unit=interval,
        unit_price=price,
        amount=round_line(exact.multiply(price, fraction), currency),
        service_start=piece.start,
        service_end=piece.end,
    )


def _units(metered: int, price: MeteredPrice) -> Decimal:
    """``metered`` units in billing units, exact when that has at most six decimals."""
    quantity = exact.divide(Decimal(metered), Decimal(price.unit_size))
    if quantity != quantity.quantize(_DISPLAY, context=exact):
        quantity = quantity.quantize(_DISPLAY, rounding=ROUND_HALF_UP)
    return quantity


def quantity_text(count: Decimal, unit: str) -> str:
    """``1 call``, ``2 calls``, ``0.5 hours``, ``3 GB`` (a unit written in capitals has no plural)."""
    shown = f"{count.normalize():,f}"
    return f"{shown} {unit}" if count == 1 or not unit.islower() else f"{shown} {unit}s"


def _usage(metric: str, used: int, terms: PlanTerms) -> InvoiceLine:
    """The line of one metric: what was used against the allowance, and the price of what is over."""
    price = terms.usage[metric]
    over = max(0, used - price.included * price.unit_size)
    quantity, shown_used = _units(over, price), _units(used, price)
    label, verb, unit = _LABELS.get(metric, metric), _VERBS.get(metric, "used"), price.unit
    description = (
        f"{label}: {quantity_text(shown_used, unit)} {verb},"
        f" {quantity_text(Decimal(price.included), unit)} included, {quantity_text(quantity, unit)} over"
    )
    if price.overage_price is None:
        description += " (not billed past the allowance)"
        unit_price, amount = Decimal(0), 0
    else:
        description += f" × {format_price(price.overage_price, terms.currency)} per {unit}"
        unit_price = price.overage_price
        amount = round_line(
            exact.divide(exact.multiply(Decimal(over), price.overage_price), Decimal(price.unit_size)), terms.currency
        )
    return InvoiceLine(
        kind="overage",
        metric=metric,
        plan_id=terms.plan_id,
        description=description,
        quantity=quantity,
        unit=price.unit,
        unit_price=unit_price,
        amount=amount,
        used=shown_used,
        included=price.included,
    )


def _billable(line: InvoiceLine) -> bool:
    """A base fee, or usage over an allowance that has a price (even if it rounds to ¥0)."""
    return line.kind == "base_fee" or (line.quantity > 0 and line.unit_price > 0)


def compute_invoice(
    subscription: Subscription,
    month: Month,
    usage: dict[str, int],
    tax_rate: Decimal,
    meta: Meta,
    *,
    seller: Seller = DEFAULT_SELLER,
    until: datetime | None = None,
) -> InvoiceIssued | None:
    """The invoice of ``month`` — so far, when ``until`` falls inside it — even when it bills
    nothing; ``None`` only when the tenant was never subscribed in the month (up to ``until``).

    ``subscription`` must hold only events recorded before the month ended (or before
    ``until``), and ``usage`` the totals of :func:`usage_window` — the caller reads both; this
    function only computes.
    """
    time_zone = subscription.time_zone
    if time_zone is None:
        return None
    period = month_period(month, time_zone)
    if until is not None and until >= period.end:
        until = None  # the month is over: the whole of it
    window = usage_window(subscription, period, until)
    if window is None:
        return None
    currency = window.terms.currency
    lines = [line for piece in _pieces(subscription, period, until) if (line := _base_fee(piece, currency))]
    lines += [
        _usage(metric, usage.get(metric, 0), window.terms) for metric in BILLED_METRICS if metric in window.terms.usage
    ]
    subtotal = sum(line.amount for line in lines)
    tax = tax_amount(subtotal, tax_rate)
    return InvoiceIssued(
        tenant_id=subscription.tenant_id,
        meta=meta,
        invoice_id=invoice_id(subscription.tenant_id, month),
        period=period_id(month),
        period_start=period.start,
        period_end=period.end,
        time_zone=time_zone,
        currency=currency,
        lines=tuple(lines),
        subtotal=subtotal,
        tax_rate=tax_rate,
        tax=tax,
        total=subtotal + tax,
        usage={m: usage.get(m, 0) for m in BILLED_METRICS},
        seller=seller,
    )


def build_invoice(
    subscription: Subscription,
    month: Month,
    usage: dict[str, int],
    tax_rate: Decimal,
    meta: Meta,
    *,
    seller: Seller = DEFAULT_SELLER,
) -> InvoiceIssued | None:
    """The invoice to issue for ``month``, or ``None`` when the month has nothing to bill (no
    base fee and nothing billable over an allowance). See :func:`compute_invoice`."""
    invoice = compute_invoice(subscription, month, usage, tax_rate, meta, seller=seller)
    if invoice is None or not any(_billable(line) for line in invoice.lines):
        return None
    return invoice
