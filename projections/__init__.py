"""JetStream consumers that fold events into Postgres read models; checkpoints; rebuild; replay.

``ProjectionRunner`` folds a stream live. ``rebuild``, ``rebuild_as_of`` and ``verify`` fold it
into a shadow schema first (see :mod:`.rebuild`); ``LogReader`` reads any window of a stream;
``projection_status`` says how far behind each projection is and how many events it has
quarantined; ``retry`` applies a projection's quarantined events again (see :mod:`.quarantine`).
``CallsProjection`` folds the MCP log into one row per gateway call (see :mod:`.calls`).
``UsageProjection`` is partitioned: it can run as several workers, each with its ``Share`` of the
USAGE stream's partitions and one of ``Checkpoints`` per partition (see :mod:`.checkpoints`).
``UsageRecovery`` runs beside the usage projection: it re-derives, from the MCP log, usage that
no gateway published (see :mod:`.recovery`), on the same checkpoints table.
"""

from __future__ import annotations

from .base import Projection
from .billing import BillingProjection
from .calls import CallsProjection
from .checkpoints import Checkpoints, Share
from .errors import MissingReadModel, ProjectionError, ReadModelChanged, RebuildInProgress, UnfoldableEvent
from .identity import IdentityProjection
from .log import LogRange, LogReader, sequence_at
from .quarantine import DeadLetter, RetryResult, retry
from .rebuild import AsOfResult, TableComparison, rebuild, rebuild_as_of, verify
from .recovery import RecoveryConfig, UsageRecovery
from .registry import RegistryProjection
from .runner import ProjectionRunner
from .status import ProjectionStatus, projection_status
from .usage import UsageProjection

PROJECTIONS: dict[str, Projection] = {
    p.name: p
    for p in (RegistryProjection(), IdentityProjection(), UsageProjection(), BillingProjection(), CallsProjection())
}

__all__ = [
    "PROJECTIONS",
    "AsOfResult",
    "BillingProjection",
    "CallsProjection",
    "Checkpoints",
    "DeadLetter",
    "IdentityProjection",
    "LogRange",
    "LogReader",
    "MissingReadModel",
    "Projection",
    "ProjectionError",
    "ProjectionRunner",
    "ProjectionStatus",
    "ReadModelChanged",
    "RebuildInProgress",
    "RecoveryConfig",
    "RegistryProjection",
    "RetryResult",
    "Share",
    "TableComparison",
    "UnfoldableEvent",
    "UsageProjection",
    "UsageRecovery",
    "projection_status",
    "rebuild",
    "rebuild_as_of",
    "retry",
    "sequence_at",
    "verify",
]
