"""Errors of metering and rate limiting.

    MeteringError
    ├── QuotaExceeded       a limit refuses the request now; ``retry_after`` says when to try again
    └── AdmissionUnavailable the RATELIMIT log cannot be reached, so no call limit can be decided
"""

from __future__ import annotations

__all__ = ["AdmissionUnavailable", "MeteringError", "QuotaExceeded"]


class MeteringError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class QuotaExceeded(MeteringError):
    def __init__(self, message: str, *, policy: str, retry_after: float) -> None:
        super().__init__(message)
        self.policy = policy
        self.retry_after = retry_after


class AdmissionUnavailable(MeteringError):
    """Failing closed: a limit that cannot be checked across replicas is not waved through."""
