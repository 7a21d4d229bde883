"""Billing from the log: plans as data (the catalogue of :mod:`democratic_ai.services.plans`),
subscriptions as events, invoices computed from usage, payments through Stripe.

Commands (:class:`BillingService`, :class:`Payments`) append BILLING events; the billing
projection folds them into read models; an invoice is a pure function of the log
(:func:`build_invoice`) and the usage read model (:class:`UsageTotals`); the month so far
(:meth:`BillingService.upcoming`) is the same computation cut at now (:func:`compute_invoice`), and
so is the preview of a change of plan (:meth:`BillingService.preview_plan`).
Settings, the seller included, are checked at start (:func:`check_environment`).
"""

from __future__ import annotations

from .config import BillingConfig, InvalidBillingConfig, StripeConfig, check_environment
from .errors import (
    BadSignature,
    BillingError,
    Conflict,
    Invalid,
    NotFound,
    StripeDisabled,
    StripeFailed,
    UsageUnavailable,
)
from .eventlog import BillingLog
from .html import render_invoice
from .invoicing import build_invoice, compute_invoice, duration, invoice_id, usage_window
from .money import format_money, format_price, round_line, tax_amount
from .payments import Payments
from .seller import DEFAULT_SELLER, InvalidSeller, load_seller
from .service import DEFAULT_TIME_ZONE, BillingService, Closed, PlanPreview
from .stripe_gateway import CheckoutSession, StripeBilling
from .subscription import Subscription, Tenure, fold_subscription
from .usage import PostgresUsageTotals, UsageTotals

__all__ = [
    "DEFAULT_SELLER",
    "DEFAULT_TIME_ZONE",
    "BadSignature",
    "BillingConfig",
    "BillingError",
    "BillingLog",
    "BillingService",
    "CheckoutSession",
    "Closed",
    "Conflict",
    "Invalid",
    "InvalidBillingConfig",
    "InvalidSeller",
    "NotFound",
    "Payments",
    "PlanPreview",
    "PostgresUsageTotals",
    "StripeBilling",
    "StripeConfig",
    "StripeDisabled",
    "StripeFailed",
    "Subscription",
    "Tenure",
    "UsageTotals",
    "UsageUnavailable",
    "build_invoice",
    "check_environment",
    "compute_invoice",
    "duration",
    "fold_subscription",
    "format_money",
    "format_price",
    "invoice_id",
    "load_seller",
    "render_invoice",
    "round_line",
    "tax_amount",
    "usage_window",
]
