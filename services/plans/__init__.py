"""The plan catalogue: each plan's limits (metering) and prices (billing), one loader for both files.

See :mod:`.catalogue`.
"""

from __future__ import annotations

from .catalogue import (
    API_KEY_WINDOW_SECONDS,
    BILLED_METRICS,
    INTERVALS,
    PLANS_ENV,
    PRICING_ENV,
    BandwidthLimit,
    CallLimit,
    ComputeLimit,
    InvalidPlans,
    InvalidPricing,
    Plan,
    PlanBook,
    PlanResolver,
    StorageLimit,
    load_plans,
)

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
