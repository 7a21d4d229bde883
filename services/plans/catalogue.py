"""The plan catalogue: every plan with its limits and its prices, from data, not code.

Two files describe a plan, and one loader reads both:

* ``schemas/json/plans.json`` (or ``$DAI_PLANS_FILE``): each plan's rate limits, the default plan
  and fixed assignments (the ``system`` tenant runs the platform and is ``unlimited``). A plan
  names up to four limits, one per algorithm of :mod:`democratic_ai.services.metering.algorithms`;
  a limit left out is no limit.
* ``schemas/json/pricing.json`` (or ``$DAI_PRICING_FILE``): what the plans that are for sale cost,
  keyed by the same plan ids. A plan without a price (``unlimited``) cannot be subscribed to. A
  price for a plan the plans file does not define (a plans file of your own may define fewer)
  can still be sold, but no tenant is put on it: metering keeps such a subscriber on its current
  limits and logs an error.

:func:`load_plans` checks every rule of both at once, so a bad file stops a process at start
(one ``dai: …`` line) rather than producing a wrong limit or invoice later. Metering reads a
plan's limits (:meth:`PlanBook.plan_of`), billing its terms (:meth:`PlanBook.terms`). Which plan
a tenant is on follows billing's subscriptions (``services/metering/subscriptions.py``).

An API key may carry its own call limit (``rate_limit``, calls per minute, set when the key
is issued); it applies on top of the tenant's plan.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Protocol, TypeVar

import msgspec

from democratic_ai.contracts.billing_events import MINOR_UNITS, MeteredPrice, PlanTerms
from democratic_ai.contracts.subjects import InvalidSubjectToken, validate_token

__all__ = [
    "API_KEY_WINDOW_SECONDS",
    "BILLED_METRICS",
    "INTERVALS",
    "PLANS_ENV",
    "PRICING_ENV",
    "BandwidthLimit",
    "CallLimit",
    "ComputeLimit",
    "InvalidPlans",
    "InvalidPricing",
    "Plan",
    "PlanBook",
    "PlanResolver",
    "StorageLimit",
    "load_plans",
]

API_KEY_WINDOW_SECONDS = 60  # an API key's ``rate_limit`` is calls per minute
PLANS_ENV = "DAI_PLANS_FILE"
PRICING_ENV = "DAI_PRICING_FILE"
INTERVALS = ("month", "year")
# The USAGE metrics a plan may price; bytes in and out are limited, not billed.
BILLED_METRICS = ("api_calls", "compute_ms", "storage_bytes")


class InvalidPlans(ValueError):
    """The plans file is unreadable or breaks a rule; the message says which and where."""


class InvalidPricing(InvalidPlans):
    """The pricing file is unreadable or breaks a rule; the message says which and where."""


# Limits ------------------------------------------------------------------------------------------


class CallLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Sliding window: at most ``limit`` calls in any ``window_seconds``."""

    limit: int
    window_seconds: int = 60


class ComputeLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Token bucket of compute milliseconds: bursts up to ``capacity``, sustained ``refill_per_second``."""

    capacity: int
    refill_per_second: float


class BandwidthLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Leaky bucket of bytes in and out: up to ``capacity`` queued, drained at ``leak_per_second``."""

    capacity: int
    leak_per_second: float


class StorageLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Fixed window: at most ``limit`` bytes written per window (86,400 s: a UTC day)."""

    limit: int
    window_seconds: int = 86_400


class Plan(msgspec.Struct, frozen=True):
    """One plan: its limits (a limit left out is no limit) and its terms (``None``: not for sale)."""

    name: str = ""
    api_calls: CallLimit | None = None
    compute_ms: ComputeLimit | None = None
    bandwidth_bytes: BandwidthLimit | None = None
    storage_bytes: StorageLimit | None = None
    terms: PlanTerms | None = None


class PlanResolver(Protocol):
    """Which plan a tenant is on."""

    def plan_of(self, tenant_id: str) -> Plan: ...


class PlanBook:
    """The catalogue: plans by id with their limits and terms, and the plan of each tenant
    (``default_plan`` unless assigned).

    ``prices`` adds terms by plan id to those the plans carry; a plan's ``terms`` are its price's.
    """

    def __init__(
        self,
        plans: dict[str, Plan],
        default_plan: str,
        assignments: dict[str, str] | None = None,
        prices: dict[str, PlanTerms] | None = None,
    ) -> None:
        self._prices = {name: plan.terms for name, plan in plans.items() if plan.terms is not None} | dict(prices or {})
        self.plans = {
            name: msgspec.structs.replace(plan, name=name, terms=self._prices.get(name)) for name, plan in plans.items()
        }
        self.default_plan = default_plan
        self.assignments = dict(assignments or {})
        for tenant, name in [("(default)", default_plan), *self.assignments.items()]:
            if name not in self.plans:
                raise InvalidPlans(f"tenant {tenant} is assigned plan {name!r}, which the file does not define.")
        for plan in self.plans.values():
            _check_limits(plan)
        for plan_id, terms in self._prices.items():
            _check_terms(plan_id, terms)

    # Limits (metering) ---------------------------------------------------------------------------

    def plan_of(self, tenant_id: str) -> Plan:
        return self.plans[self.assignments.get(tenant_id, self.default_plan)]

    def assign(self, tenant_id: str, plan: str) -> None:
        """Put ``tenant_id`` on ``plan`` (metering does this from billing's events)."""
        if plan not in self.plans:
            raise InvalidPlans(f"there is no plan {plan!r}; known: {', '.join(sorted(self.plans))}.")
        self.assignments[tenant_id] = plan

    def horizon(self) -> float:
        """The longest time any bucket of any plan remembers: how far back a replay must go."""
        longest = 0.0
        for plan in self.plans.values():
            if plan.compute_ms:
                longest = max(longest, 2 * plan.compute_ms.capacity / plan.compute_ms.refill_per_second)
            if plan.bandwidth_bytes:
                longest = max(longest, 2 * plan.bandwidth_bytes.capacity / plan.bandwidth_bytes.leak_per_second)
        return longest

    def longest_call_window(self) -> float:
        windows = [p.api_calls.window_seconds for p in self.plans.values() if p.api_calls]
        return float(max([API_KEY_WINDOW_SECONDS, *windows]))

    # Prices (billing) ----------------------------------------------------------------------------

    @property
    def prices(self) -> dict[str, PlanTerms]:
        """The terms of every plan for sale, by plan id."""
        return dict(self._prices)

    def terms(self, plan_id: str) -> PlanTerms:
        """The terms of ``plan_id``; raises :class:`KeyError` for a plan that is not for sale."""
        return self._prices[plan_id]


def _check_limits(plan: Plan) -> None:
    problems = []
    if plan.api_calls and (plan.api_calls.limit < 0 or plan.api_calls.window_seconds <= 0):
        problems.append("api_calls needs limit >= 0 and window_seconds > 0")
    if plan.compute_ms and (plan.compute_ms.capacity <= 0 or plan.compute_ms.refill_per_second <= 0):
        problems.append("compute_ms needs a positive capacity and refill_per_second")
    if plan.bandwidth_bytes and (plan.bandwidth_bytes.capacity <= 0 or plan.bandwidth_bytes.leak_per_second <= 0):
        problems.append("bandwidth_bytes needs a positive capacity and leak_per_second")
    if plan.storage_bytes and (plan.storage_bytes.limit < 0 or plan.storage_bytes.window_seconds <= 0):
        problems.append("storage_bytes needs limit >= 0 and window_seconds > 0")
    if problems:
        raise InvalidPlans(f"plan {plan.name!r}: {'; '.join(problems)}.")


def _check_terms(plan_id: str, terms: PlanTerms) -> None:
    problems = []
    try:
        validate_token(terms.plan_id, "plan")
    except InvalidSubjectToken as exc:
        problems.append(str(exc))
    if terms.plan_id != plan_id:
        problems.append(f"its terms are those of plan {terms.plan_id!r}")
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


# The files ---------------------------------------------------------------------------------------


class _Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str = ""
    api_calls: CallLimit | None = None
    compute_ms: ComputeLimit | None = None
    bandwidth_bytes: BandwidthLimit | None = None
    storage_bytes: StorageLimit | None = None


class _PlansFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename={"comment": "_comment"}):
    version: int
    default_plan: str
    plans: dict[str, _Limits]
    assignments: dict[str, str] = {}
    comment: str = ""


# Prices are read as strings and parsed as Decimal: a JSON number would pass through a float
# in most tools that write the file, so the file does not accept one.
class _Usage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    unit: str
    unit_size: int = 1
    included: int = 0
    overage_price: str | None = None


class _Price(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    currency: str
    monthly_price: str
    yearly_price: str
    usage: dict[str, _Usage] = {}
    features: list[str] = []


class _PricingFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename={"comment": "_comment"}):
    version: int
    plans: dict[str, _Price]
    comment: str = ""


_File = TypeVar("_File", _PlansFile, _PricingFile)


def load_plans(
    plans_file: str | Path | None = None,
    pricing_file: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> PlanBook:
    """The catalogue of ``plans_file`` and ``pricing_file``; each defaults to the file its variable
    (``DAI_PLANS_FILE``, ``DAI_PRICING_FILE``) of ``env`` (the process's environment) names, or to
    the one shipped with the package. Raises :class:`InvalidPlans` (:class:`InvalidPricing` for the
    pricing file) with a one-sentence reason."""
    env = os.environ if env is None else env
    plans_path = plans_file or env.get(PLANS_ENV) or None
    pricing_path = pricing_file or env.get(PRICING_ENV) or None
    limits = _read(plans_path, "plans", _PlansFile, InvalidPlans)
    prices = _read(pricing_path, "pricing", _PricingFile, InvalidPricing)
    plans = {
        plan_id: Plan(
            api_calls=entry.api_calls,
            compute_ms=entry.compute_ms,
            bandwidth_bytes=entry.bandwidth_bytes,
            storage_bytes=entry.storage_bytes,
        )
        for plan_id, entry in limits.plans.items()
    }
    terms = {plan_id: _terms(plan_id, price) for plan_id, price in prices.plans.items()}
    return PlanBook(plans, limits.default_plan, limits.assignments, terms)


def _where(path: str | Path | None, kind: str) -> str:
    return str(path) if path else f"(packaged {kind}.json)"


def _read(path: str | Path | None, kind: str, type_: type[_File], error: type[InvalidPlans]) -> _File:
    where = _where(path, kind)
    try:
        if path:
            data = Path(path).read_bytes()
        else:
            data = resources.files("democratic_ai.schemas").joinpath(f"json/{kind}.json").read_bytes()
        return msgspec.json.decode(data, type=type_)
    except OSError as exc:
        raise error(f"cannot read the {kind} file {where}: {exc}") from None
    except msgspec.ValidationError as exc:
        raise error(f"the {kind} file {where} is invalid: {exc}") from None
    except msgspec.DecodeError as exc:
        raise error(f"the {kind} file {where} is not JSON: {exc}") from None


def _terms(plan_id: str, price: _Price) -> PlanTerms:
    return PlanTerms(
        plan_id=plan_id,
        name=price.name,
        currency=price.currency,
        monthly_price=_decimal(price.monthly_price, f"{plan_id}.monthly_price"),
        yearly_price=_decimal(price.yearly_price, f"{plan_id}.yearly_price"),
        features=tuple(price.features),
        usage={
            metric: MeteredPrice(
                unit=u.unit,
                unit_size=u.unit_size,
                included=u.included,
                overage_price=None
                if u.overage_price is None
                else _decimal(u.overage_price, f"{plan_id}.usage.{metric}.overage_price"),
            )
            for metric, u in price.usage.items()
        },
    )


def _decimal(text: str, where: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise InvalidPricing(f'{where} must be a decimal string such as "4900" or "0.05", not {text!r}.') from None
    if not value.is_finite():
        raise InvalidPricing(f"{where} must be a finite decimal, not {text!r}.")
    return value
