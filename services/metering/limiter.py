"""The rate limiter a gateway consults before every call: four algorithms, one decision.

    policy      algorithm        holder          decided
    calls       sliding window   the tenant      exactly, across replicas (.admission)
    key-calls   sliding window   the API key     exactly, across replicas (.admission)
    compute     token bucket     the tenant      from the log, post-paid (.meters)
    bandwidth   leaky bucket     the tenant      from the log, post-paid (.meters)
    storage     fixed window     the tenant      when data is written (.storage), not per call

Limits come from the tenant's plan (:mod:`.plans`) and the key's own ``rate_limit``. The
cheap checks run first (buckets, in memory), and a call refused by one never consumes call
quota; a call admitted by the tenant's window but refused by the key's gives its unit back.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from democratic_ai.services.identity import Principal
from democratic_ai.services.plans import API_KEY_WINDOW_SECONDS, Plan, PlanBook

from .admission import TENANT_HOLDER, Admission, key_holder
from .meters import Meters

__all__ = ["Decision", "PolicyState", "RateLimiter"]


@dataclass(frozen=True, slots=True)
class PolicyState:
    """One limit as it applies to a caller now: what headers and ``/v1/usage/limits`` show."""

    name: str  # calls, key-calls, compute, bandwidth, storage
    algorithm: str  # sliding_window, token_bucket, leaky_bucket, fixed_window
    metric: str  # what it counts
    unit: str  # requests, compute-ms, content-bytes
    quota: int  # calls per window, or the bucket's capacity
    window: int  # seconds: the window, or the time the bucket takes to refill / drain completely
    used: int
    remaining: int
    reset: float  # seconds until the whole quota is available again


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    policies: tuple[PolicyState, ...] = ()  # every policy of the call, after the decision
    refused_by: str = ""  # the policy that refused
    retry_after: float = 0.0
    message: str = ""


_ALLOWED = Decision(True)


class RateLimiter:
    def __init__(self, plans: PlanBook, admission: Admission, meters: Meters) -> None:
        self.plans = plans
        self.admission = admission
        self.meters = meters

    async def admit(self, principal: Principal, bytes_in: int) -> Decision:
        """Admit one call of ``bytes_in`` bytes or say which limit refuses it and for how long.

        In memory unless this replica must lease call quota (see :mod:`.admission`); raises
        :class:`.errors.AdmissionUnavailable` if that lease cannot be recorded."""
        now = time.time()
        tenant = principal.tenant_id
        plan = self.plans.plan_of(tenant)
        refusal = self.meters.check(tenant, bytes_in, now)
        if refusal is not None:
            return Decision(
                False,
                refused_by=refusal.policy,
                retry_after=refusal.retry_after,
                message=f"{refusal.message}; retry in {_seconds(refusal.retry_after)} s",
            )
        admission = self.admission
        calls = plan.api_calls
        lease = 0
        if calls is not None:
            lease = admission.take_local(tenant, TENANT_HOLDER) or await admission.take(
                tenant, TENANT_HOLDER, calls.limit, calls.window_seconds
            )
            if not lease:
                retry = admission.retry_after(tenant, TENANT_HOLDER, calls.limit)
                return Decision(
                    False,
                    refused_by="calls",
                    retry_after=retry,
                    message=(
                        f"the tenant's plan allows {calls.limit} calls per {calls.window_seconds} s;"
                        f" retry in {_seconds(retry)} s"
                    ),
                )
        key_limit = principal.rate_limit if principal.key_id else None
        if key_limit is not None:
            holder = key_holder(principal.key_id)
            if not (
                admission.take_local(tenant, holder)
                or await admission.take(tenant, holder, key_limit, API_KEY_WINDOW_SECONDS)
            ):
                if lease:
                    admission.put_back(tenant, TENANT_HOLDER, lease)
                retry = admission.retry_after(tenant, holder, key_limit)
                return Decision(
                    False,
                    refused_by="key-calls",
                    retry_after=retry,
                    message=(
                        f"this API key allows {key_limit} calls per {API_KEY_WINDOW_SECONDS} s;"
                        f" retry in {_seconds(retry)} s"
                    ),
                )
        return _ALLOWED

    def policies(self, principal: Principal, *, storage: bool = False, now: float | None = None) -> list[PolicyState]:
        """The state of every limit that applies to ``principal`` (storage only if asked);
        ``now`` (this host's clock) is for the buckets, the call windows keep the server's."""
        now = time.time() if now is None else now
        tenant = principal.tenant_id
        plan = self.plans.plan_of(tenant)
        states = []
        if plan.api_calls is not None:
            states.append(
                self._calls("calls", tenant, TENANT_HOLDER, plan.api_calls.limit, plan.api_calls.window_seconds)
            )
        if principal.key_id and principal.rate_limit is not None:
            states.append(
                self._calls(
                    "key-calls", tenant, key_holder(principal.key_id), principal.rate_limit, API_KEY_WINDOW_SECONDS
                )
            )
        states.extend(self._buckets(tenant, plan, storage, now))
        return states

    def _calls(self, name: str, tenant: str, holder: str, limit: int, window: int) -> PolicyState:
        view = self.admission.view(tenant, holder, limit, window)  # on the server's clock, as leases are
        return PolicyState(
            name, "sliding_window", "api_calls", "requests", limit, window, view.used, view.remaining, view.reset
        )

    def _buckets(self, tenant: str, plan: Plan, storage: bool, now: float) -> list[PolicyState]:
        meters = self.meters.tenant(tenant, now)
        states = []
        if meters.compute is not None:
            bucket = meters.compute.refilled(now)
            available = max(0.0, bucket.tokens)
            states.append(
                PolicyState(
                    "compute",
                    "token_bucket",
                    "compute_ms",
                    "compute-ms",
                    int(bucket.capacity),
                    round(bucket.capacity / bucket.rate),
                    round(bucket.capacity - bucket.tokens),
                    int(available),
                    (bucket.capacity - bucket.tokens) / bucket.rate,
                )
            )
        if meters.bandwidth is not None:
            leaky = meters.bandwidth.drained(now)
            states.append(
                PolicyState(
                    "bandwidth",
                    "leaky_bucket",
                    "bytes_in+bytes_out",
                    "content-bytes",
                    int(leaky.capacity),
                    round(leaky.capacity / leaky.rate),
                    round(leaky.level),
                    int(max(0.0, leaky.capacity - leaky.level)),
                    leaky.level / leaky.rate,
                )
            )
        if storage and meters.storage is not None:
            window = meters.storage.current(now)
            states.append(
                PolicyState(
                    "storage",
                    "fixed_window",
                    "storage_bytes",
                    "content-bytes",
                    window.limit,
                    int(window.size),
                    window.used,
                    window.remaining(now),
                    window.resets_in(now),
                )
            )
        return states


def _seconds(value: float) -> int:
    """Whole seconds, rounded up, at least 1: what ``Retry-After`` can say."""
    return max(1, math.ceil(value)) if math.isfinite(value) else 86_400
