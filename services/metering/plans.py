"""Plans and their limits: data (``schemas/json/plans.json``), not code.

A plan names up to four limits, one per algorithm of :mod:`.algorithms`; a limit left out is
no limit. Which plan a tenant is on is billing's business (issue 5): until billing publishes
subscriptions, :class:`PlanBook` answers ``default_plan`` for every tenant but those the file
assigns (the ``system`` tenant runs the platform and is unlimited). Billing extends this by
adding plans to the file (prices live with billing) and by supplying a :class:`PlanResolver`
fed by its own events.

An API key may carry its own call limit (``rate_limit``, calls per minute, set when the key
is issued); it applies on top of the tenant's plan.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Protocol

import msgspec

__all__ = [
    "API_KEY_WINDOW_SECONDS",
    "BandwidthLimit",
    "CallLimit",
    "ComputeLimit",
    "InvalidPlans",
    "Plan",
    "PlanBook",
    "PlanResolver",
    "StorageLimit",
    "load_plans",
]

API_KEY_WINDOW_SECONDS = 60  # an API key's ``rate_limit`` is calls per minute
PLANS_ENV = "DAI_PLANS_FILE"


class InvalidPlans(ValueError):
    """The plans file is unreadable or breaks a rule; the message says which and where."""


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


class Plan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str = ""
    api_calls: CallLimit | None = None
    compute_ms: ComputeLimit | None = None
    bandwidth_bytes: BandwidthLimit | None = None
    storage_bytes: StorageLimit | None = None


class _PlansFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename={"comment": "_comment"}):
    version: int
    default_plan: str
    plans: dict[str, Plan]
    assignments: dict[str, str] = {}
    comment: str = ""


class PlanResolver(Protocol):
    """Which plan a tenant is on."""

    def plan_of(self, tenant_id: str) -> Plan: ...


class PlanBook:
    """Plans by name, and the plan of each tenant (``default_plan`` unless assigned)."""

    def __init__(self, plans: dict[str, Plan], default_plan: str, assignments: dict[str, str] | None = None) -> None:
        self.plans = {name: msgspec.structs.replace(plan, name=name) for name, plan in plans.items()}
        self.default_plan = default_plan
        self.assignments = dict(assignments or {})
        for tenant, name in [("(default)", default_plan), *self.assignments.items()]:
            if name not in self.plans:
                raise InvalidPlans(f"tenant {tenant} is assigned plan {name!r}, which the file does not define.")
        for plan in self.plans.values():
            _check(plan)

    def plan_of(self, tenant_id: str) -> Plan:
        return self.plans[self.assignments.get(tenant_id, self.default_plan)]

    def assign(self, tenant_id: str, plan: str) -> None:
        """Put ``tenant_id`` on ``plan`` (billing does this from its events)."""
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


def _check(plan: Plan) -> None:
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


def load_plans(path: str | Path | None = None) -> PlanBook:
    """The plans of ``path``, of ``$DAI_PLANS_FILE``, or the ones shipped with the package."""
    path = path or os.environ.get(PLANS_ENV)
    try:
        if path:
            data = Path(path).read_bytes()
        else:
            data = resources.files("democratic_ai.schemas").joinpath("json/plans.json").read_bytes()
        parsed = msgspec.json.decode(data, type=_PlansFile)
    except OSError as exc:
        raise InvalidPlans(f"cannot read the plans file {path}: {exc}") from None
    except msgspec.ValidationError as exc:
        raise InvalidPlans(f"the plans file {path or '(packaged)'} is invalid: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidPlans(f"the plans file {path or '(packaged)'} is not JSON: {exc}") from None
    return PlanBook(parsed.plans, parsed.default_plan, parsed.assignments)
