"""Billing over HTTP: the tenant's plan, its invoices (JSON or a printable page), the invoice
of the month so far, closing a month, Stripe Checkout and Stripe's webhook.

Reads come from the billing read models inside a transaction that names the tenant, so Row
Level Security confines them to it: another tenant's invoice id answers 404 like any unknown
one. A super admin may name a tenant with ``?tenant_id=`` (or ``?tenant=``), and reads an
invoice by its id alone (``<tenant>-<YYYY-MM>`` names its tenant); anyone else gets their own.

Invoices answer JSON or HTML: ``?format=json|html`` decides, else the ``Accept`` header (by
its q-values; a tie goes to JSON). A format nobody offers answers 406 ``NOT_ACCEPTABLE``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import asyncpg
import msgspec
from aiohttp import web

from democratic_ai.contracts import ErrorCode
from democratic_ai.contracts.billing_events import InvoiceIssued, PlanTerms, Seller
from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.fields import Id, rejection
from democratic_ai.schemas import tenant_transaction, wait_for_checkpoint
from democratic_ai.services.billing import BillingService, Payments, PlanPreview, render_invoice
from democratic_ai.services.billing.payments import WebhookOutcome
from democratic_ai.services.identity import Principal

from .auth import STRIPE_WEBHOOK_PATH, principal_of, require, require_tenant
from .bodies import from_row, read_json, respond
from .errors import ApiError
from .meta import request_meta
from .openapi import Query, operation
from .state import BILLING, IDENTITY, PAYMENTS, POOL

__all__ = ["add_billing_routes"]

log = logging.getLogger(__name__)

_INVOICE_COLUMNS = (
    "invoice_id, tenant_id, period, period_start, period_end, time_zone, currency, subtotal,"
    " tax_rate, tax, total, usage, status, issued_at, stripe_invoice_id, paid_at, seller"
)
_LINE_COLUMNS = (
    "line_no, kind, description, metric, plan_id, quantity, unit, unit_price, amount, service_start,"
    " service_end, used, included"
)


def _plain(record: Mapping[str, Any]) -> dict[str, Any]:
    """A row as JSON-ready values: decimals as plain strings ("50000", never "5E+4")."""
    return {k: f"{v:f}" if isinstance(v, Decimal) else v for k, v in record.items()}


# Answers ---------------------------------------------------------------------------------------

DecimalText = Annotated[str, msgspec.Meta(description="A decimal number written out in full (never an exponent).")]


class Subscription(msgspec.Struct):
    tenant_id: str
    plan_id: str
    plan_name: str
    interval: str
    time_zone: str
    currency: str
    status: str
    terms: PlanTerms  # the price list locked in by the last subscription event
    started_at: datetime
    current_since: datetime
    cancelled_at: datetime | None


class PlanDocument(msgspec.Struct):
    tenant_id: str
    subscription: Subscription | None  # None: no plan chosen yet
    plans: list[PlanTerms]  # the catalogue one may choose from


class Invoice(msgspec.Struct):
    invoice_id: str
    tenant_id: str
    period: str
    period_start: datetime
    period_end: datetime
    time_zone: str
    currency: str
    subtotal: int
    tax_rate: DecimalText
    tax: int
    total: int
    usage: dict[str, int]
    status: str
    issued_at: datetime
    stripe_invoice_id: str | None
    paid_at: datetime | None
    seller: Seller | None  # who issued it, as it was then; None on invoices issued before it was recorded


class InvoiceList(msgspec.Struct):
    invoices: list[Invoice]


class InvoiceLineRow(msgspec.Struct):
    line_no: int
    kind: str
    description: str
    metric: str
    plan_id: str
    quantity: DecimalText  # a usage line: the quantity over the allowance
    unit: str
    unit_price: DecimalText
    amount: int
    service_start: datetime | None
    service_end: datetime | None
    used: DecimalText | None  # a usage line: used in the month, in the line's unit …
    included: int | None  # … and the allowance (None on invoices issued before they were recorded)


class UpcomingInvoice(msgspec.Struct):
    """The current month's invoice so far: what closing the month would issue if it ended now."""

    invoice_id: str  # the id the month's invoice will have
    tenant_id: str
    period: str
    period_start: datetime
    period_end: datetime
    as_of: datetime  # computed at this instant; fees are prorated and usage counted up to it
    time_zone: str
    currency: str
    status: str  # "upcoming"
    lines: list[InvoiceLineRow]
    subtotal: int
    tax_rate: DecimalText
    tax: int
    total: int
    usage: dict[str, int]
    seller: Seller


class ProjectedInvoice(msgspec.Struct):
    """A month's invoice as it will be issued if nothing else changes: fees to the month's end, usage so far."""

    invoice_id: str
    period: str
    period_start: datetime
    period_end: datetime
    time_zone: str
    currency: str
    lines: list[InvoiceLineRow]
    subtotal: int
    tax_rate: DecimalText
    tax: int
    total: int


class PlanPreviewDocument(msgspec.Struct):
    """What choosing a plan now would do to this month's invoice; nothing is changed."""

    tenant_id: str
    plan_id: str
    interval: str
    as_of: datetime  # the instant the change is supposed to be made
    changes: bool  # False: the tenant is already on that plan and interval
    unchanged: ProjectedInvoice | None  # this month's invoice without the change (None: no plan this month)
    changed: ProjectedInvoice | None  # … and with it
    difference: int  # changed.total − unchanged.total: more to pay (a charge), or less (negative: a credit)


class Payment(msgspec.Struct):
    stripe_event_id: str
    outcome: str
    amount: int
    currency: str
    reason: str
    at: datetime


class InvoiceDetail(Invoice):
    lines: list[InvoiceLineRow]
    payments: list[Payment]


class ClosedMonth(msgspec.Struct):
    tenant_id: str
    period: str
    created: bool  # False: the invoice already existed (or there was nothing to bill)
    invoice: InvoiceIssued | None  # the invoice.issued event; None: nothing to bill that month
    stripe_invoice_id: str  # empty unless Stripe is on


class ClosedMonths(msgspec.Struct):
    closed: list[ClosedMonth]


class Checkout(msgspec.Struct):
    session_id: str
    url: str  # send the user here


class WebhookReceipt(msgspec.Struct):
    received: bool
    outcome: WebhookOutcome


_TENANT = Query("tenant_id", "The tenant (super admins only; anyone else gets their own). `tenant` is an alias.")
_TENANT_ALIAS = Query("tenant", "The same as tenant_id.")
_FORMAT = Query(
    "format",
    "json or html (the printable page); overrides the Accept header.",
    {"type": "string", "enum": ["json", "html"]},
)
_FORMATS = {"json": "application/json", "html": "text/html"}  # in order of preference on a tie
_INVOICE_ID = re.compile(r"(?P<tenant>.+)-\d{4}-\d{2}")


def _meta(request: web.Request, principal: Principal) -> Meta:
    return request_meta(request, principal.actor)


def _named_tenant(request: web.Request) -> str | None:
    return request.query.get("tenant_id") or request.query.get("tenant") or None


def _tenant(request: web.Request) -> tuple[Principal, str]:
    """The tenant a request is about: ``?tenant_id=`` for super admins, else the caller's own."""
    tenant_id = _named_tenant(request) or principal_of(request).tenant_id
    return require_tenant(request, tenant_id), tenant_id


def _accepted(header: str, media_type: str) -> float:
    """The q-value ``header`` gives ``media_type``: that of its most specific matching range."""
    kind = media_type.split("/")[0]
    best: tuple[int, float] = (-1, 0.0)  # (specificity, q)
    for part in header.split(","):
        media_range, *params = (p.strip() for p in part.split(";"))
        media_range = media_range.lower()
        specificity = {media_type: 2, f"{kind}/*": 1, "*/*": 0}.get(media_range)
        if specificity is None or specificity < best[0]:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0  # a q we cannot read accepts nothing
        if specificity > best[0]:
            best = (specificity, q)
    return best[1]


def _format(request: web.Request) -> str:
    """``json`` or ``html``, from ``?format=`` or ``Accept``; 406 when the caller takes neither."""
    asked = request.query.get("format")
    if asked is not None:
        asked = asked.lower()
        if asked in _FORMATS:
            return asked
        raise ApiError(
            ErrorCode.NOT_ACCEPTABLE,
            f"format {asked!r} is not offered; use json or html",
            {"field": "format", "offered": list(_FORMATS)},
        )
    header = request.headers.get("Accept", "").strip()
    if not header:
        return "json"
    ranked = sorted(_FORMATS, key=lambda name: -_accepted(header, _FORMATS[name]))  # stable: json wins a tie
    if _accepted(header, _FORMATS[ranked[0]]) <= 0:
        raise ApiError(
            ErrorCode.NOT_ACCEPTABLE,
            "no format the Accept header takes is offered; invoices are application/json or text/html",
            {"offered": list(_FORMATS.values())},
        )
    return ranked[0]


async def _rows(request: web.Request, tenant_id: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async with tenant_transaction(request.app[POOL], tenant_id) as conn:
        return await conn.fetch(query, *args)


async def _caught_up(request: web.Request, sequence: int, timeout: float = 2.0) -> None:
    """Wait (briefly) until the billing read model holds the event just appended at ``sequence``."""
    if await wait_for_checkpoint(request.app[POOL], "billing", sequence, timeout) >= sequence:
        return
    log.warning("the billing read model lags behind the log; is the projection worker running?")


# The plan -----------------------------------------------------------------------------------------


def _catalogue(service: BillingService) -> list[PlanTerms]:
    return [terms for _, terms in sorted(service.plans.prices.items())]


async def _plan_document(request: web.Request, tenant_id: str) -> PlanDocument:
    rows = await _rows(
        request,
        tenant_id,
        "SELECT tenant_id, plan_id, plan_name, interval, time_zone, currency, status,"
        " terms, started_at, current_since, cancelled_at FROM billing_subscriptions",
    )
    return PlanDocument(
        tenant_id, from_row(Subscription, _plain(rows[0])) if rows else None, _catalogue(request.app[BILLING])
    )


@operation("The tenant's plan and the catalogue of plans.", {200: PlanDocument}, query=(_TENANT, _TENANT_ALIAS))
async def get_plan(request: web.Request) -> web.Response:
    _, tenant_id = _tenant(request)
    require(request, "billing:read")
    return respond(await _plan_document(request, tenant_id))


class PlanChoice(msgspec.Struct, forbid_unknown_fields=True):
    plan: Id
    interval: Id = "month"
    time_zone: Id | None = None


@operation(
    "Choose the tenant's plan (and interval, time zone).",
    {200: PlanDocument},
    body=PlanChoice,
    query=(_TENANT, _TENANT_ALIAS),
)
async def put_plan(request: web.Request) -> web.Response:
    principal, tenant_id = _tenant(request)
    require(request, "billing:update")
    body = await read_json(request, PlanChoice)
    sequence = await request.app[BILLING].set_plan(
        _meta(request, principal), tenant_id, body.plan, body.interval, body.time_zone
    )
    await _caught_up(request, sequence)
    return respond(await _plan_document(request, tenant_id))


def _projected(draft: InvoiceIssued | None) -> ProjectedInvoice | None:
    if draft is None:
        return None
    lines = [_plain({"line_no": n, **msgspec.structs.asdict(line)}) for n, line in enumerate(draft.lines, start=1)]
    fields = {name: getattr(draft, name) for name in ProjectedInvoice.__struct_fields__ if name != "lines"}
    return from_row(ProjectedInvoice, _plain(fields), lines=lines)


def _preview_document(preview: PlanPreview) -> PlanPreviewDocument:
    return PlanPreviewDocument(
        tenant_id=preview.tenant_id,
        plan_id=preview.plan_id,
        interval=preview.interval,
        as_of=preview.as_of,
        changes=preview.changes,
        unchanged=_projected(preview.unchanged),
        changed=_projected(preview.changed),
        difference=preview.difference,
    )


_PLAN = Query("plan", "The plan to preview (an id of the catalogue).")
_INTERVAL = Query("interval", "month (the default) or year.", {"type": "string", "enum": ["month", "year"]})
_TIME_ZONE = Query("time_zone", "The billing time zone of a first subscription (IANA name; default Asia/Tokyo).")


def _query_choice(request: web.Request) -> PlanChoice:
    """``?plan=&interval=&time_zone=`` checked as PUT checks its body (the same struct)."""
    if not request.query.get("plan"):
        raise ApiError(ErrorCode.VALIDATION_FAILED, "plan is required: ?plan=<plan id>", {"field": "plan"})
    asked = {name: request.query[name] for name in ("plan", "interval", "time_zone") if request.query.get(name)}
    try:
        return msgspec.convert(asked, PlanChoice)
    except msgspec.ValidationError as exc:
        rejected = rejection(exc)
        field = rejected.path.removeprefix("$.")
        raise ApiError(ErrorCode.VALIDATION_FAILED, f"{field}: {rejected.message}", {"field": field}) from None


@operation(
    "Preview choosing a plan: this month's invoice with the change made now and without it.",
    {200: PlanPreviewDocument},
    query=(_PLAN, _INTERVAL, _TIME_ZONE, _TENANT, _TENANT_ALIAS),
    description="Nothing is appended. The change PUT /v1/billing/plan would record is decided by the same code and"
    " both months are computed by the code that issues invoices, to the month's end (fees prorated by the"
    " second, usage counted so far). 422 VALIDATION_FAILED for an unknown plan or interval, as PUT answers.",
)
async def preview_plan(request: web.Request) -> web.Response:
    principal, tenant_id = _tenant(request)
    require(request, "billing:read")
    choice = _query_choice(request)
    preview = await request.app[BILLING].preview_plan(
        _meta(request, principal), tenant_id, choice.plan, choice.interval, choice.time_zone
    )
    return respond(_preview_document(preview))


@operation("Cancel the tenant's plan at the end of its period.", {200: PlanDocument}, query=(_TENANT, _TENANT_ALIAS))
async def cancel_plan(request: web.Request) -> web.Response:
    principal, tenant_id = _tenant(request)
    require(request, "billing:update")
    await _caught_up(request, await request.app[BILLING].cancel(_meta(request, principal), tenant_id))
    return respond(await _plan_document(request, tenant_id))


# Invoices -----------------------------------------------------------------------------------------


@operation("The tenant's invoices, newest first.", {200: InvoiceList}, query=(_TENANT, _TENANT_ALIAS))
async def list_invoices(request: web.Request) -> web.Response:
    _, tenant_id = _tenant(request)
    require(request, "billing:read")
    rows = await _rows(request, tenant_id, f"SELECT {_INVOICE_COLUMNS} FROM billing_invoices ORDER BY period DESC")
    return respond(InvoiceList([from_row(Invoice, _plain(r)) for r in rows]))


def _page(
    request: web.Request, tenant_id: str, invoice: Mapping[str, Any], lines: list[Mapping[str, Any]]
) -> web.Response:
    tenant = request.app[IDENTITY].tenants.get(tenant_id)
    page = render_invoice(dict(invoice), [dict(line) for line in lines], tenant.name if tenant else tenant_id)
    return web.Response(text=page, content_type="text/html", charset="utf-8")


@operation(
    "The current month's invoice so far — base fee prorated to now, usage against the allowance, tax —"
    " computed as closing the month would; a printable page with ?format=html or 'Accept: text/html'.",
    {200: UpcomingInvoice},
    query=(_TENANT, _TENANT_ALIAS, _FORMAT),
    other_content={"text/html": {"type": "string"}},
    description="Nothing is appended: the month's invoice is issued once it has ended (dai billing close-period)."
    " 404 NOT_FOUND when the tenant has no subscription this month; 406 NOT_ACCEPTABLE for a format"
    " other than JSON or HTML.",
)
async def upcoming_invoice(request: web.Request) -> web.Response:
    principal, tenant_id = _tenant(request)
    require(request, "billing:read")
    wanted = _format(request)
    draft = await request.app[BILLING].upcoming(tenant_id, principal.actor)
    lines = [{"line_no": n, **msgspec.structs.asdict(line)} for n, line in enumerate(draft.lines, start=1)]
    invoice = {
        name: getattr(draft, name)
        for name in (
            "invoice_id",
            "tenant_id",
            "period",
            "period_start",
            "period_end",
            "time_zone",
            "currency",
            "subtotal",
            "tax_rate",
            "tax",
            "total",
            "usage",
        )
    }
    invoice.update(as_of=draft.meta.at, status="upcoming", seller=draft.seller)
    if wanted == "html":
        return _page(request, tenant_id, {**invoice, "seller": msgspec.to_builtins(draft.seller)}, lines)
    return respond(from_row(UpcomingInvoice, _plain(invoice), lines=[_plain(line) for line in lines]))


@operation(
    "One invoice with its lines and payments; a printable HTML page with ?format=html or 'Accept: text/html'.",
    {200: InvoiceDetail},
    query=(_TENANT, _TENANT_ALIAS, _FORMAT),
    other_content={"text/html": {"type": "string"}},
    description="A super admin reads any tenant's invoice by its id alone. 406 NOT_ACCEPTABLE for a format other"
    " than JSON or HTML.",
)
async def get_invoice(request: web.Request) -> web.Response:
    invoice_id = request.match_info["invoice"]
    named = _named_tenant(request)
    if named is None and principal_of(request).is_super_admin and (found := _INVOICE_ID.fullmatch(invoice_id)):
        named = found["tenant"]  # "<tenant>-<YYYY-MM>": the id names its tenant
    tenant_id = named or principal_of(request).tenant_id
    require_tenant(request, tenant_id)
    require(request, "billing:read")
    wanted = _format(request)
    async with tenant_transaction(request.app[POOL], tenant_id) as conn:
        invoice = await conn.fetchrow(
            f"SELECT {_INVOICE_COLUMNS} FROM billing_invoices WHERE invoice_id = $1", invoice_id
        )
        lines = await conn.fetch(
            f"SELECT {_LINE_COLUMNS} FROM billing_invoice_lines WHERE invoice_id = $1 ORDER BY line_no", invoice_id
        )
        payments = await conn.fetch(
            "SELECT stripe_event_id, outcome, amount, currency, reason, at FROM billing_payments"
            " WHERE invoice_id = $1 ORDER BY at",
            invoice_id,
        )
    if invoice is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"no invoice {invoice_id!r}")
    if wanted == "html":
        return _page(request, tenant_id, invoice, list(lines))
    return respond(
        from_row(
            InvoiceDetail, _plain(invoice), lines=[_plain(r) for r in lines], payments=[_plain(r) for r in payments]
        )
    )


class ClosePeriod(msgspec.Struct, forbid_unknown_fields=True):
    tenant_id: Id | None = None
    period: Id | None = None


@operation(
    "Issue the invoices of ended months (and push them to Stripe when it is on); admins.",
    {200: ClosedMonths},
    body=ClosePeriod,
    body_required=False,
)
async def close_period(request: web.Request) -> web.Response:
    """Admin: issue the invoices of ended months (and push them to Stripe when it is on)."""
    principal = require(request, "billing:close")
    body = await read_json(request, ClosePeriod) if request.can_read_body else ClosePeriod()
    closed = await request.app[BILLING].close_due(body.tenant_id, body.period)
    payments: Payments = request.app[PAYMENTS]
    results = []
    for result in closed:
        stripe_invoice_id = ""
        if result.invoice is not None and payments.enabled:
            stripe_invoice_id = await payments.push(_meta(request, principal), result.invoice)
        results.append(ClosedMonth(result.tenant_id, result.period, result.created, result.invoice, stripe_invoice_id))
    return respond(ClosedMonths(results))


# Stripe -------------------------------------------------------------------------------------------


@operation(
    "A Stripe Checkout page where the tenant enters a card (503 while Stripe is off).",
    {201: Checkout},
    query=(_TENANT, _TENANT_ALIAS),
)
async def payment_method(request: web.Request) -> web.Response:
    """A Stripe Checkout page (setup mode) where the tenant enters a card; we never see it."""
    principal, tenant_id = _tenant(request)
    require(request, "billing:update")
    tenant = request.app[IDENTITY].tenants.get(tenant_id)
    subscription = await request.app[BILLING].subscription(tenant_id)
    currency = subscription.current.terms.currency if subscription.current else "JPY"
    session = await request.app[PAYMENTS].checkout(
        _meta(request, principal), tenant_id, tenant.name if tenant else tenant_id, currency
    )
    return respond(Checkout(session.session_id, session.url), status=201)


@operation(
    "Stripe's webhook, authenticated by its Stripe-Signature header.",
    {200: WebhookReceipt},
    public=True,
    body=dict[str, Any],
    description="Answers 503 PAYMENT_PROVIDER_UNAVAILABLE while Stripe is not configured, and 400 for a"
    " signature that does not verify. Not for clients: Stripe calls it.",
)
async def stripe_webhook(request: web.Request) -> web.Response:
    """Stripe's webhook: verified by signature (no credential), recorded at most once per event."""
    payload = await request.read()
    meta = Meta(at=datetime.now(UTC), actor="stripe", ip=request.remote or "")
    outcome = await request.app[PAYMENTS].webhook(meta, payload, request.headers.get("Stripe-Signature"))
    return respond(WebhookReceipt(True, outcome))


def add_billing_routes(app: web.Application) -> None:
    app.router.add_get("/v1/billing/plan", get_plan)
    app.router.add_put("/v1/billing/plan", put_plan)
    app.router.add_get("/v1/billing/plan/preview", preview_plan)
    app.router.add_delete("/v1/billing/plan", cancel_plan)
    app.router.add_post("/v1/billing/close-period", close_period)
    app.router.add_post("/v1/billing/payment-method", payment_method)
    app.router.add_post(STRIPE_WEBHOOK_PATH, stripe_webhook)
    app.router.add_get("/v1/invoices", list_invoices)
    app.router.add_get("/v1/invoices/upcoming", upcoming_invoice)  # before {invoice}: no invoice id is "upcoming"
    app.router.add_get("/v1/invoices/{invoice}", get_invoice)
