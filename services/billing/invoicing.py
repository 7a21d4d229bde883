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
* **Usage over the allowance**, per metric: the plan in force at the end of the month (the last
  tenure that overlaps it) sets the monthly allowance and the overage price for the month's
  whole usage — from the first instant of the month the tenant was subscribed to the last.
  ``overage = max(0, used − included)``; ``amount = overage × price ÷ unit_size``, rounded half
  up. Storage is the bytes held at the end of that window.
* **Tax** on the subtotal, rounded down (:mod:`.money`).

Only events recorded before the month ended are read, so closing a month later, or again after
a rebuild, yields the same invoice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from democratic_ai.contracts.billing_events import InvoiceIssued, InvoiceLine, PlanTerms
from democratic_ai.contracts.identity_events import Meta

from .money import exact, format_price, round_line, tax_amount
from .periods import Month, Period, month_period, seconds, service_period, zone
from .pricing import BILLED_METRICS
from .subscription import Subscription, Tenure

__all__ = ["UsageWindow", "build_invoice", "invoice_id", "period_id", "usage_window"]

_LABELS = {"api_calls": "API calls", "compute_ms": "Compute time", "storage_bytes": "Storage"}
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


def usage_window(subscription: Subscription, period: Period) -> UsageWindow | None:
    """From the first instant of ``period`` the tenant was subscribed to the last; ``None`` if never."""
    overlapping = [t for t in subscription.tenures
                   if t.start < period.end and (t.end is None or t.end > period.start)]
    if not overlapping:
        return None
    last_end = overlapping[-1].end
    return UsageWindow(
        start=max(period.start, overlapping[0].start),
        end=period.end if last_end is None else min(period.end, last_end),
        terms=overlapping[-1].terms,
    )


def _pieces(subscription: Subscription, period: Period) -> Iterator[_Piece]:
    """The pieces of service that end within ``period`` (start exclusive, end inclusive)."""
    for tenure in subscription.tenures:
        cursor = tenure.start
        while cursor < period.end:
            service = service_period(cursor, tenure.interval, tenure.anchor, tenure.time_zone)
            end = service.end if tenure.end is None else min(tenure.end, service.end)
            if end > period.end:
                break  # still running when the month ends: a later invoice bills it
            if end > period.start and end > cursor:
                yield _Piece(tenure, service, cursor, end)
            if tenure.end is not None and end >= tenure.end:
                break
            cursor = service.end


def _local(at: datetime, time_zone: str) -> str:
    return at.astimezone(zone(time_zone)).strftime("%Y-%m-%d %H:%M")


def _base_fee(piece: _Piece, currency: str) -> InvoiceLine | None:
    terms, interval = piece.tenure.terms, piece.tenure.interval
    price = terms.monthly_price if interval == "month" else terms.yearly_price
    if price == 0:
        return None
    used, whole = seconds(piece.end - piece.start), seconds(piece.service.end - piece.service.start)
    fraction = exact.divide(used, whole)
    time_zone = piece.tenure.time_zone
    description = (f"{terms.name} plan ({'monthly' if interval == 'month' else 'yearly'}),"
                   f" {_local(piece.start, time_zone)} – {_local(piece.end, time_zone)} ({time_zone})")
    if used != whole:
        description += f", prorated {used:,} s of {whole:,} s"
    return InvoiceLine(
        kind="base_fee", description=description, plan_id=terms.plan_id,
        quantity=Decimal(1) if used == whole else fraction.quantize(_DISPLAY, rounding=ROUND_HALF_UP),
        unit=interval, unit_price=price, amount=round_line(exact.multiply(price, fraction), currency),
        service_start=piece.start, service_end=piece.end,
    )


def _overage(metric: str, used: int, terms: PlanTerms) -> InvoiceLine | None:
    price = terms.usage.get(metric)
    if price is None or price.overage_price is None:
        return None
    over = max(0, used - price.included * price.unit_size)
    if over == 0:
        return None
    quantity = exact.divide(Decimal(over), Decimal(price.unit_size))
    if quantity != quantity.quantize(_DISPLAY, context=exact):
        quantity = quantity.quantize(_DISPLAY, rounding=ROUND_HALF_UP)
    shown_used = exact.divide(Decimal(used), Decimal(price.unit_size)).quantize(_DISPLAY, rounding=ROUND_HALF_UP)
    return InvoiceLine(
        kind="overage", metric=metric, plan_id=terms.plan_id,
        description=(f"{_LABELS.get(metric, metric)} over the allowance: {shown_used.normalize():,f} {price.unit}"
                     f" used, {price.included:,} included, {quantity.normalize():,f} × "
                     f"{format_price(price.overage_price, terms.currency)} per {price.unit}"),
        quantity=quantity, unit=price.unit, unit_price=price.overage_price,
        amount=round_line(exact.divide(exact.multiply(Decimal(over), price.overage_price),
                                       Decimal(price.unit_size)), terms.currency),
    )


def build_invoice(
    subscription: Subscription, month: Month, usage: dict[str, int], tax_rate: Decimal, meta: Meta,
) -> InvoiceIssued | None:
    """The invoice of ``month``, or ``None`` when the month has nothing to bill.

    ``subscription`` must hold only events recorded before the month ended, and ``usage`` the
    totals of :func:`usage_window` — the caller reads both; this function only computes.
    """
    time_zone = subscription.time_zone
    if time_zone is None:
        return None
    period = month_period(month, time_zone)
    window = usage_window(subscription, period)
    if window is None:
        return None
    currency = window.terms.currency
    lines = [line for piece in _pieces(subscription, period) if (line := _base_fee(piece, currency))]
    lines += [line for metric in BILLED_METRICS if (line := _overage(metric, usage.get(metric, 0), window.terms))]
    if not lines:
        return None
    subtotal = sum(line.amount for line in lines)
    tax = tax_amount(subtotal, tax_rate)
    return InvoiceIssued(
        tenant_id=subscription.tenant_id, meta=meta, invoice_id=invoice_id(subscription.tenant_id, month),
        period=period_id(month), period_start=period.start, period_end=period.end, time_zone=time_zone,
        currency=currency, lines=tuple(lines), subtotal=subtotal, tax_rate=tax_rate, tax=tax,
        total=subtotal + tax, usage={m: usage.get(m, 0) for m in BILLED_METRICS},
    )
