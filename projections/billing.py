"""Billing read models: subscriptions, Stripe customers, invoices with their lines, payments.

A batch is folded in memory first — the latest state of each subscription and customer, the
final status of each invoice — and written with one statement per kind of change, in an order
that respects the foreign keys (invoices before their lines and payments).

An invoice's status is ``open`` until paid; a failed payment makes it ``payment_failed``, and
``paid`` is final: Stripe does not promise to deliver events in order, so a failure reported
after the success must not undo it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from nats.aio.msg import Msg

from democratic_ai.contracts.billing_events import (
    CustomerLinked,
    InvoiceIssued,
    InvoicePushed,
    PaymentFailed,
    PaymentMethodAttached,
    PaymentSucceeded,
    PlanChanged,
    SubscriptionCancelled,
    SubscriptionStarted,
    decode_event,
)
from democratic_ai.contracts.streams import BILLING_STREAM
from democratic_ai.contracts.subjects import ALL_BILLING

__all__ = ["BillingProjection"]

log = logging.getLogger(__name__)

_SUBSCRIPTION_COLUMNS = (
    "plan_id",
    "plan_name",
    "interval",
    "time_zone",
    "currency",
    "status",
    "terms",
    "started_at",
    "current_since",
    "cancelled_at",
    "updated_at",
)


class BillingProjection:
    name = "billing"
    stream = BILLING_STREAM
    filter_subject = ALL_BILLING
    partitions = None
    tables = (
        "billing_payments",
        "billing_invoice_lines",
        "billing_invoices",
        "billing_customers",
        "billing_subscriptions",
    )

    async def apply(self, conn: asyncpg.Connection, events: Sequence[Msg]) -> None:
        subscriptions: dict[str, list[Any]] = {}  # tenant → its subscription events, in order
        customers: list[tuple[Any, ...]] = []
        payment_methods: list[tuple[Any, ...]] = []
        invoices: list[tuple[Any, ...]] = []
        lines: list[tuple[Any, ...]] = []
        pushed: list[tuple[Any, ...]] = []
        payments: list[tuple[Any, ...]] = []
        status: dict[str, tuple[str, datetime | None]] = {}  # invoice → (status, paid_at)
        for msg in events:
            event = decode_event(msg.data)  # a malformed event raises: the runner quarantines it
            at = event.meta.at
            match event:
                case SubscriptionStarted() | PlanChanged() | SubscriptionCancelled():
                    subscriptions.setdefault(event.tenant_id, []).append(event)
                case CustomerLinked():
                    customers.append((event.tenant_id, event.stripe_customer_id, at))
                case PaymentMethodAttached():
                    payment_methods.append((event.tenant_id, event.stripe_customer_id, event.payment_method_id, at))
                case InvoiceIssued():
                    paid = event.total <= 0  # nothing to collect
                    invoices.append(
                        (
                            event.invoice_id,
                            event.tenant_id,
                            event.period,
                            event.period_start,
                            event.period_end,
                            event.time_zone,
                            event.currency,
                            event.subtotal,
                            event.tax_rate,
                            event.tax,
                            event.total,
                            dict(event.usage),
                            "paid" if paid else "open",
                            at,
                            at if paid else None,
                            None if event.seller is None else msgspec.to_builtins(event.seller),  # None: a v1 invoice
                        )
                    )
                    lines.extend(
                        (
                            event.invoice_id,
                            n,
                            event.tenant_id,
                            line.kind,
                            line.description,
                            line.metric,
                            line.plan_id,
                            line.quantity,
                            line.unit,
                            line.unit_price,
                            line.amount,
                            line.service_start,
                            line.service_end,
                            line.used,
                            line.included,
                        )
                        for n, line in enumerate(event.lines, start=1)
                    )
                case InvoicePushed():
                    pushed.append((event.invoice_id, event.stripe_invoice_id))
                case PaymentSucceeded() | PaymentFailed():
                    succeeded = isinstance(event, PaymentSucceeded)
                    payments.append(
                        (
                            event.stripe_event_id,
                            event.tenant_id,
                            event.invoice_id,
                            "succeeded" if succeeded else "failed",
                            event.amount,
                            event.currency,
                            event.stripe_invoice_id,
                            "" if succeeded else event.reason,
                            at,
                        )
                    )
                    if succeeded:
                        status[event.invoice_id] = ("paid", status.get(event.invoice_id, ("", None))[1] or at)
                    elif status.get(event.invoice_id, ("",))[0] != "paid":
                        status[event.invoice_id] = ("payment_failed", None)
        await _subscriptions(conn, subscriptions)
        if customers:
            await conn.executemany(
                "INSERT INTO billing_customers (tenant_id, stripe_customer_id, linked_at, updated_at)"
                " VALUES ($1, $2, $3, $3) ON CONFLICT (tenant_id) DO NOTHING",
                customers,
            )
        if payment_methods:
            await conn.executemany(
                "INSERT INTO billing_customers AS c (tenant_id, stripe_customer_id, default_payment_method_id,"
                " linked_at, updated_at) VALUES ($1, $2, $3, $4, $4) ON CONFLICT (tenant_id) DO UPDATE"
                " SET default_payment_method_id = excluded.default_payment_method_id, updated_at = excluded.updated_at",
                payment_methods,
            )
        if invoices:
            await conn.executemany(
                "INSERT INTO billing_invoices (invoice_id, tenant_id, period, period_start, period_end, time_zone,"
                " currency, subtotal, tax_rate, tax, total, usage, status, issued_at, paid_at, seller)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
                " ON CONFLICT (invoice_id) DO NOTHING",
                invoices,
            )
        if lines:
            await conn.executemany(
                "INSERT INTO billing_invoice_lines (invoice_id, line_no, tenant_id, kind, description, metric,"
                " plan_id, quantity, unit, unit_price, amount, service_start, service_end, used, included)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
                " ON CONFLICT (invoice_id, line_no) DO NOTHING",
                lines,
            )
        if pushed:
            await conn.executemany("UPDATE billing_invoices SET stripe_invoice_id = $2 WHERE invoice_id = $1", pushed)
        if payments:
            await conn.executemany(
                "INSERT INTO billing_payments (stripe_event_id, tenant_id, invoice_id, outcome, amount, currency,"
                " stripe_invoice_id, reason, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                " ON CONFLICT (stripe_event_id) DO NOTHING",
                payments,
            )
        if status:
            await conn.executemany(
                "UPDATE billing_invoices SET"
                " status = CASE WHEN status = 'paid' THEN 'paid' ELSE $2 END,"
                " paid_at = CASE WHEN status = 'paid' THEN paid_at ELSE $3 END"
                " WHERE invoice_id = $1",
                [(invoice_id, new, paid_at) for invoice_id, (new, paid_at) in status.items()],
            )


async def _subscriptions(conn: asyncpg.Connection, changes: dict[str, list[Any]]) -> None:
    """Fold each tenant's subscription events of the batch onto its row (read once, written once)."""
    if not changes:
        return
    current = {
        r["tenant_id"]: dict(r)
        for r in await conn.fetch(
            f"SELECT tenant_id, {', '.join(_SUBSCRIPTION_COLUMNS)} FROM billing_subscriptions"
            " WHERE tenant_id = any($1::text[])",
            list(changes),
        )
    }
    rows = []
    for tenant_id, events in changes.items():
        row = current.get(tenant_id)
        for event in events:
            at = event.meta.at
            match event:
                case SubscriptionStarted():
                    row = {
                        **(row or {"started_at": at, "time_zone": event.time_zone}),
                        **_plan(event),
                        "updated_at": at,
                    }
                case PlanChanged() if row is not None:
                    row = {**row, **_plan(event), "updated_at": at}
                case SubscriptionCancelled() if row is not None:
                    row = {**row, "status": "cancelled", "cancelled_at": at, "updated_at": at}
                case _:
                    log.error("tenant %s: %s without a subscription; skipped", tenant_id, type(event).__name__)
        if row is not None:
            rows.append((tenant_id, *(row[c] for c in _SUBSCRIPTION_COLUMNS)))
    placeholders = ", ".join(f"${i}" for i in range(1, len(_SUBSCRIPTION_COLUMNS) + 2))
    updates = ", ".join(f"{c} = excluded.{c}" for c in _SUBSCRIPTION_COLUMNS)
    await conn.executemany(
        f"INSERT INTO billing_subscriptions (tenant_id, {', '.join(_SUBSCRIPTION_COLUMNS)}) VALUES ({placeholders})"
        f" ON CONFLICT (tenant_id) DO UPDATE SET {updates}",
        rows,
    )


def _plan(event: SubscriptionStarted | PlanChanged) -> dict[str, Any]:
    terms = event.terms
    return {
        "plan_id": terms.plan_id,
        "plan_name": terms.name,
        "interval": event.interval,
        "currency": terms.currency,
        "status": "active",
        "terms": msgspec.to_builtins(terms),
        "current_since": event.meta.at,
        "cancelled_at": None,
    }
