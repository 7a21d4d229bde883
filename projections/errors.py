"""Errors of the projections package, by cause.

    ProjectionError
     ├── RebuildInProgress   CONFLICT: another rebuild, verification or as-of build of the projection is running
     ├── MissingReadModel    NOT_READY: a table the projection owns does not exist (run the migrations)
     ├── ReadModelChanged    CONFLICT: a table's columns changed while a shadow was built (a migration ran)
     └── UnfoldableEvent     VALIDATION_FAILED: a projection refuses one event; it is quarantined (.quarantine)

The root is the platform's (:class:`democratic_ai.contracts.PlatformError`): a stable code, a message.
"""

from __future__ import annotations

from democratic_ai.contracts import ErrorCode, PlatformError

__all__ = ["MissingReadModel", "ProjectionError", "ReadModelChanged", "RebuildInProgress", "UnfoldableEvent"]


class ProjectionError(PlatformError):
    """Something prevented a projection command; the live read model is unchanged."""


class RebuildInProgress(ProjectionError):
    """Only one shadow build per projection runs at a time: they share the projection's lock."""

    code = ErrorCode.CONFLICT


class MissingReadModel(ProjectionError):
    """The projection's tables are not in the database."""

    code = ErrorCode.NOT_READY


class ReadModelChanged(ProjectionError):
    """The live tables no longer have the columns the shadow was built with; run it again."""

    code = ErrorCode.CONFLICT


class UnfoldableEvent(ProjectionError):
    """Raised by a projection's ``apply`` for an event it cannot fold; the runner quarantines it."""

    code = ErrorCode.VALIDATION_FAILED
