"""Money: ``Decimal`` prices, integer minor units, and the three rounding rules of an invoice.

1. **Lines round half up, once each.** A line's amount is computed exactly (quantity × unit
   price, times the prorated fraction of its service period) and rounded to the currency's
   minor unit with ``ROUND_HALF_UP`` (a tie goes away from zero): 50,000 calls × ¥0.05 =
   ¥2,500; 3 calls × ¥0.05 = ¥0.15 → ¥0; 10 calls × ¥0.05 = ¥0.5 → ¥1.
2. **The subtotal is the sum of the rounded lines**, so every line on the page adds up.
3. **Tax is rounded down, once per invoice** (切り捨て, the usual choice in Japan and allowed
   by the qualified-invoice rules: one rounding per invoice and rate): ⌊subtotal × rate⌋.

Only a division can be inexact (a prorated fraction, an hour of 3,600,000 ms). It runs in a
context of 50 significant digits: the exact value is a fraction whose denominator is at most
a year of seconds or a unit size, so it is never within 10⁻⁴⁰ of a rounding tie unless it is
exactly one — in which case the division is exact too. The rounding is therefore that of the
exact fraction.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_UP, Context, Decimal

from democratic_ai.contracts.billing_events import MINOR_UNITS

__all__ = [
    "MINOR_UNITS",
    "UnknownCurrency",
    "exact",
    "format_money",
    "format_price",
    "minor_exponent",
    "round_line",
    "tax_amount",
]

_SYMBOLS: dict[str, str] = {"JPY": "¥", "USD": "$", "EUR": "€"}

exact = Context(prec=50)  # see the module docstring for why 50 digits make divisions safe


class UnknownCurrency(ValueError):
    """A currency whose minor unit the platform does not know."""


def minor_exponent(currency: str) -> int:
    try:
        return MINOR_UNITS[currency]
    except KeyError:
        raise UnknownCurrency(
            f"currency {currency!r} is not supported; use one of {', '.join(sorted(MINOR_UNITS))}."
        ) from None


def round_line(value: Decimal, currency: str) -> int:
    """``value`` (in major units, e.g. yen) rounded half up to an integer of minor units."""
    scaled = exact.multiply(value, Decimal(10) ** minor_exponent(currency))
    return int(scaled.quantize(Decimal(1), rounding=ROUND_HALF_UP, context=exact))


def tax_amount(subtotal: int, rate: Decimal) -> int:
    """Tax on ``subtotal`` minor units at ``rate`` (0.10 for 10 %), rounded down."""
    return int(exact.multiply(Decimal(subtotal), rate).quantize(Decimal(1), rounding=ROUND_DOWN, context=exact))


def format_money(minor: int, currency: str) -> str:
    """``7400, "JPY"`` → ``"¥7,400"``; ``-1999, "USD"`` → ``"-$19.99"``."""
    exponent = minor_exponent(currency)
    sign = "-" if minor < 0 else ""
    major = Decimal(abs(minor)).scaleb(-exponent)
    return f"{sign}{_SYMBOLS.get(currency, currency + ' ')}{major:,.{exponent}f}"


def format_price(price: Decimal, currency: str) -> str:
    """A unit price as printed, with as many decimals as it has: ``¥0.05``, ``¥50``, ``$0.015``."""
    exponent = minor_exponent(currency)
    shown = price if -price.as_tuple().exponent > exponent else price.quantize(Decimal(1).scaleb(-exponent))
    return f"{_SYMBOLS.get(currency, currency + ' ')}{shown:,f}"
