"""Plans' prices: data (``schemas/json/pricing.json``), not code.

The file is keyed by the plan ids of ``schemas/json/plans.json`` — the rate limits of each
plan, which metering reads — and adds what each plan costs. Keeping prices in a sibling file
lets limits and prices change independently. Loading checks every rule once, so a bad file
stops a process at start rather than producing a wrong invoice later.
"""

from __future__ import annotations

import os
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path

import msgspec

from democratic_ai.contracts.billing_events import MeteredPrice, PlanTerms
from democratic_ai.contracts.subjects import InvalidSubjectToken, validate_token

from .money import MINOR_UNITS

__all__ = ["BILLED_METRICS", "INTERVALS", "InvalidPricing", "PriceBook", "load_pricing"]

PRICING_ENV = "DAI_PRICING_FILE"
INTERVALS = ("month", "year")
# The USAGE metrics a plan may price (issue 4's names); bytes in and out are limited, not billed.
BILLED_METRICS = ("api_calls", "compute_ms", "storage_bytes")


class InvalidPricing(ValueError):
    """The pricing file is unreadable or breaks a rule; the message says which and where."""


# Prices are read as strings and parsed as Decimal: a JSON number would pass through a float
# in most tools that write the file, so the file does not accept one.
class _Usage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    unit: str
    unit_size: int = 1
    included: int = 0
    overage_price: str | None = None


class _Plan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    currency: str
    monthly_price: str
    yearly_price: str
    usage: dict[str, _Usage] = {}
    features: list[str] = []


class _PricingFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename={"comment": "_comment"}):
    version: int
    plans: dict[str, _Plan]
    comment: str = ""


class PriceBook:
    """The priced plans by id."""

    def __init__(self, plans: dict[str, PlanTerms]) -> None:
        for terms in plans.values():
            _check(terms)
        self.plans = dict(plans)

    def terms(self, plan_id: str) -> PlanTerms:
        """The terms of ``plan_id``; raises :class:`KeyError` for a plan the file does not price."""
        return self.plans[plan_id]


def _check(terms: PlanTerms) -> None:
    problems = []
    try:
        validate_token(terms.plan_id, "plan")
    except InvalidSubjectToken as exc:
        problems.append(str(exc))
    if terms.currency not in MINOR_UNITS:
        problems.append(f"currency {terms.currency!r} is not one of {', '.join(sorted(MINOR_UNITS))}")
    if terms.monthly_price < 0 or terms.yearly_price < 0:
        problems.append("prices must not be negative")
    for metric, price in terms.usage.items():
        if metric not in BILLED_METRICS:
            problems.append(f"metric {metric!r} is not billable; use {', '.join(BILLED_METRICS)}")
        if price.unit_size < 1 or price.included < 0:
            problems.append(f"{metric} needs unit_size >= 1 and included >= 0")
        if price.overage_price is not None and price.overage_price < 0:
            problems.append(f"{metric}'s overage_price must not be negative")
    if problems:
        raise InvalidPricing(f"plan {terms.plan_id!r}: {'; '.join(problems)}.")


def load_pricing(path: str | Path | None = None) -> PriceBook:
    """The prices of ``path``, of ``$DAI_PRICING_FILE``, or the ones shipped with the package."""
    path = path or os.environ.get(PRICING_ENV)
    where = str(path) if path else "(packaged pricing.json)"
    try:
        if path:
            data = Path(path).read_bytes()
        else:
            data = resources.files("democratic_ai.schemas").joinpath("json/pricing.json").read_bytes()
        parsed = msgspec.json.decode(data, type=_PricingFile)
    except OSError as exc:
        raise InvalidPricing(f"cannot read the pricing file {where}: {exc}") from None
    except msgspec.ValidationError as exc:
        raise InvalidPricing(f"the pricing file {where} is invalid: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidPricing(f"the pricing file {where} is not JSON: {exc}") from None
    return PriceBook({
        plan_id: PlanTerms(
            plan_id=plan_id, name=plan.name, currency=plan.currency,
            monthly_price=_decimal(plan.monthly_price, f"{plan_id}.monthly_price"),
            yearly_price=_decimal(plan.yearly_price, f"{plan_id}.yearly_price"), features=tuple(plan.features),
            usage={
                metric: MeteredPrice(
                    unit=u.unit, unit_size=u.unit_size, included=u.included,
                    overage_price=None if u.overage_price is None
                    else _decimal(u.overage_price, f"{plan_id}.usage.{metric}.overage_price"),
                )
                for metric, u in plan.usage.items()
            },
        )
        for plan_id, plan in parsed.plans.items()
    })


def _decimal(text: str, where: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise InvalidPricing(f"{where} must be a decimal string such as \"4900\" or \"0.05\", not {text!r}.") from None
    if not value.is_finite():
        raise InvalidPricing(f"{where} must be a finite decimal, not {text!r}.")
    return value
