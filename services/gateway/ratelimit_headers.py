"""``RateLimit-Policy`` and ``RateLimit`` headers (IETF draft-ietf-httpapi-ratelimit-headers-10).

Both are Structured Field Lists with one item per policy, named by a string:

    RateLimit-Policy: "calls";q=600;w=60, "bandwidth";q=52428800;w=50;qu="content-bytes"
    RateLimit: "calls";r=0;t=12, "bandwidth";r=52427000;t=1

``q`` is the quota, ``w`` the window in seconds, ``qu`` the quota unit (``requests`` when
absent; ``content-bytes`` for bandwidth and storage); ``r`` is what remains and ``t`` the
seconds until the quota is whole again. For the buckets, ``w`` is the time a full bucket takes
to refill (or an overflowing one to drain). Compute milliseconds have no registered unit, so
the compute policy says so with a vendor parameter, ``dai-unit="compute-ms"``, which clients
that do not know it ignore.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from democratic_ai.services.metering import PolicyState

__all__ = ["limit_header", "policy_header", "retry_after_header"]

_UNITS = {"requests": "", "content-bytes": ';qu="content-bytes"', "compute-ms": ';dai-unit="compute-ms"'}


def _whole(seconds: float) -> int:
    return max(0, math.ceil(seconds)) if math.isfinite(seconds) else 86_400


def policy_header(states: Iterable[PolicyState]) -> str:
    return ", ".join(f'"{s.name}";q={s.quota};w={max(1, s.window)}{_UNITS.get(s.unit, "")}' for s in states)


def limit_header(states: Iterable[PolicyState], refused: str = "", retry_after: float = 0.0) -> str:
    """Each policy's remaining quota; the refusing one says 0 and when to retry."""
    return ", ".join(
        f'"{s.name}";r=0;t={_whole(retry_after)}'
        if s.name == refused
        else f'"{s.name}";r={s.remaining};t={_whole(s.reset)}'
        for s in states
    )


def retry_after_header(seconds: float) -> str:
    """Whole seconds, at least 1 (``Retry-After: 0`` would invite an immediate retry)."""
    return str(max(1, _whole(seconds)))
