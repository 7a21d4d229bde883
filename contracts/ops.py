"""What operators ask the projections process over NATS, and what it answers.

The gateway connects to PostgreSQL as ``dai_app``, which reads read models and nothing else:
it may not see quarantined events (their payloads are every tenant's) nor write a read model.
So it asks the process that folds them — the projections worker, connected as the owner —
on core NATS request/reply (:data:`PROJECTIONS_STATUS`, :data:`PROJECTIONS_RETRY`; only the
gateway and the operator may publish there, only the projections role subscribes). Answers
carry no payload bytes, only what an operator reads: positions, lag, subjects and errors.

Every answer is an :class:`OpsAnswer`: ``error`` set (a stable ``ErrorCode`` value and a
message) or the result.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

__all__ = [
    "PROJECTIONS_QUEUE",
    "PROJECTIONS_RETRY",
    "PROJECTIONS_STATUS",
    "OpsAnswer",
    "OpsError",
    "ProjectionState",
    "ProjectionsReport",
    "QuarantinedEvent",
    "RetryOutcome",
    "RetryRequest",
]

PROJECTIONS_STATUS = "ops.projections.status"
PROJECTIONS_RETRY = "ops.projections.retry"
PROJECTIONS_QUEUE = "dai-projections-ops"  # one worker answers each request, however many run


class ProjectionState(msgspec.Struct, frozen=True):
    """A projection's position: as ``dai projections status`` prints it."""

    name: str
    stream: str
    applied: int  # the last stream sequence folded into the read model
    stream_last: int
    lag_events: int
    lag_seconds: float
    quarantined: int


class QuarantinedEvent(msgspec.Struct, frozen=True):
    """An event a projection set aside, without its payload."""

    projection: str
    stream: str
    sequence: int
    subject: str
    error: str
    attempts: int  # 1 + the retries that failed again
    quarantined_at: datetime


class ProjectionsReport(msgspec.Struct, frozen=True):
    projections: list[ProjectionState]
    quarantined: list[QuarantinedEvent]  # oldest first, at most ``limit`` of them
    quarantined_total: int


class RetryRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    projection: str
    sequence: int


class RetryOutcome(msgspec.Struct, frozen=True):
    projection: str
    sequence: int
    applied: bool  # folded now and removed from the quarantine
    error: str = ""  # why it still fails, when it does
    attempts: int = 0  # the attempts so far, when it still fails


class OpsError(msgspec.Struct, frozen=True):
    code: str  # an ErrorCode value
    message: str


class OpsAnswer(msgspec.Struct, frozen=True, omit_defaults=True):
    error: OpsError | None = None
    report: ProjectionsReport | None = None
    retried: RetryOutcome | None = None
