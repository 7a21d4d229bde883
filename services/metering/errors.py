"""Errors of metering and rate limiting, each with a stable code the gateway's table turns into a status.

MeteringError
├── QuotaExceeded        RATE_LIMITED: a limit refuses the request now; ``retry_after`` says when to try again
└── AdmissionUnavailable NOT_READY: the RATELIMIT log cannot be reached, so no call limit can be decided
"""

from __future__ import annotations

from democratic_ai.contracts import ErrorCode, PlatformError

__all__ = ["AdmissionUnavailable", "MeteringError", "QuotaExceeded"]


class MeteringError(PlatformError):
    """The root of metering's errors."""


class QuotaExceeded(MeteringError):
    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, *, policy: str, retry_after: float) -> None:
        super().__init__(message, policy=policy, retry_after=retry_after)
        self.policy = policy
        self.retry_after = retry_after


class AdmissionUnavailable(MeteringError):
    """Failing closed: a limit that cannot be checked across replicas is not waved through."""

    code = ErrorCode.NOT_READY
