"""Metering and rate limits: usage events of every call, and limits enforced from the log.

Command side only: events are published here and folded into Postgres by
``projections/usage.py``. Plans and their limits come from the plan catalogue
(:mod:`democratic_ai.services.plans`), whose ``Plan``, ``PlanBook``, ``load_plans`` and
``InvalidPlans`` this package re-exports for :class:`MeteringConfig`. The gateway holds one
:class:`Metering`. What a call used is derived from how it ended by
:mod:`democratic_ai.contracts.call_usage` (re-exported here: ``GATEWAY``, ``is_metered``,
``usage_of``), which the usage recovery sweep next to the usage projection
(:mod:`democratic_ai.projections.recovery`) derives it with too.
"""

from __future__ import annotations

from democratic_ai.contracts.call_usage import GATEWAY, is_metered, usage_of
from democratic_ai.services.plans import InvalidPlans, Plan, PlanBook, load_plans

from .admission import Admission, AdmissionConfig
from .algorithms import FixedWindow, Grant, LeakyBucket, SlidingLog, TokenBucket
from .errors import AdmissionUnavailable, MeteringError, QuotaExceeded
from .limiter import Decision, PolicyState, RateLimiter
from .publisher import PublisherConfig, UsagePublisher
from .service import Metering, MeteringConfig

__all__ = [
    "GATEWAY",
    "Admission",
    "AdmissionConfig",
    "AdmissionUnavailable",
    "Decision",
    "FixedWindow",
    "Grant",
    "InvalidPlans",
    "LeakyBucket",
    "Metering",
    "MeteringConfig",
    "MeteringError",
    "Plan",
    "PlanBook",
    "PolicyState",
    "PublisherConfig",
    "QuotaExceeded",
    "RateLimiter",
    "SlidingLog",
    "TokenBucket",
    "UsagePublisher",
    "is_metered",
    "load_plans",
    "usage_of",
]
