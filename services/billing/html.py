"""An invoice as a printable HTML page.

Every value that came from outside — the tenant's name, a line's description, ids — passes
through :func:`html.escape`; the page has no script and loads nothing, so it prints the same
offline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from html import escape
from typing import Any

from .invoicing import quantity_text
from .money import format_money, format_price
from .periods import zone

__all__ = ["render_invoice"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 52rem; color: #111; }
h1 { font-size: 1.6rem; margin-bottom: 0; } .muted { color: #555; }
table { width: 100%; border-collapse: collapse; margin-top: 1.5rem; }
th, td { padding: .4rem .5rem; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; white-space: nowrap; }
tfoot td { border-bottom: none; } tfoot tr.total td { font-weight: bold; border-top: 2px solid #111; }
.status { display: inline-block; padding: .1rem .5rem; border: 1px solid #555; border-radius: .3rem; }
.seller { float: right; text-align: right; font-style: normal; white-space: pre-line; }
@media print { body { margin: 0; } .noprint { display: none; } }
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _local(at: datetime, time_zone: str) -> str:
    return at.astimezone(zone(time_zone)).strftime("%Y-%m-%d %H:%M")


def _quantity(value: Decimal) -> str:
    return f"{value.normalize():,f}"


def _seller(seller: Mapping[str, Any] | None) -> str:
    """The issuer's block; an invoice issued before sellers were recorded (v1) has none."""
    if not seller:
        return ""
    number = seller.get("registration_number") or ""
    return (
        f'<address class="seller"><strong>{_e(seller["name"])}</strong>'
        + (f"\n{_e(seller['address'])}" if seller.get("address") else "")
        + (f"\nRegistration number (登録番号) {_e(number)}" if number else "")
        + "</address>"
    )


def render_invoice(invoice: Mapping[str, Any], lines: Sequence[Mapping[str, Any]], tenant_name: str) -> str:
    """The page of one invoice and its lines: a read-model row (``issued_at``, ``status``) or an
    upcoming invoice (``as_of`` instead), each with an optional ``seller`` mapping."""
    currency, time_zone = invoice["currency"], invoice["time_zone"]
    seller = invoice.get("seller")
    issuer = seller["name"] if seller else "Democratic_AI"
    if "as_of" in invoice:
        title = f"Upcoming invoice {invoice['invoice_id']}"
        state = (
            f'So far, as of {_e(_local(invoice["as_of"], time_zone))} · <span class="status">upcoming</span>'
            " — the month is not over; this is what it would be billed if it ended now"
        )
    else:
        title = f"Invoice {invoice['invoice_id']}"
        state = (
            f"Issued {_e(_local(invoice['issued_at'], time_zone))} ·"
            f' <span class="status">{_e(invoice["status"])}</span>'
        )
    body_rows = "\n".join(
        f"<tr><td>{_e(line['description'])}</td>"
        f'<td class="num">{_e(quantity_text(line["quantity"], line["unit"]))}</td>'
        f'<td class="num">{_e(format_price(line["unit_price"], currency))}</td>'
        f'<td class="num">{_e(format_money(line["amount"], currency))}</td></tr>'
        for line in lines
    )
    rate = f"{_quantity(invoice['tax_rate'] * 100)}%"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{_e(title)}</title><style>{_STYLE}</style></head>
<body>
{_seller(seller)}
<h1>{_e(title)}</h1>
<p class="muted">{_e(issuer)} · billed to <strong>{_e(tenant_name)}</strong> ({_e(invoice["tenant_id"])})</p>
<p>Period {_e(invoice["period"])}: {_e(_local(invoice["period_start"], time_zone))} –
{_e(_local(invoice["period_end"], time_zone))} ({_e(time_zone)})<br>
{state}</p>
<table>
<thead><tr><th>Description</th><th class="num">Quantity</th><th class="num">Unit price</th>
<th class="num">Amount</th></tr></thead>
<tbody>
{body_rows}
</tbody>
<tfoot>
<tr><td colspan="3" class="num">Subtotal</td><td class="num">{_e(format_money(invoice["subtotal"], currency))}</td></tr>
<tr><td colspan="3" class="num">Consumption tax {_e(rate)} (rounded down)</td>
<td class="num">{_e(format_money(invoice["tax"], currency))}</td></tr>
<tr class="total"><td colspan="3" class="num">Total</td>
<td class="num">{_e(format_money(invoice["total"], currency))}</td></tr>
</tfoot>
</table>
<p class="muted">Line amounts are rounded half up to the currency's smallest unit; tax is computed on the subtotal
and rounded down.</p>
</body></html>
"""
