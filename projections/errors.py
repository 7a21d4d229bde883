"""Errors of the projections package, by cause.

    ProjectionError
     ├── RebuildInProgress   another rebuild, verification or as-of build of the projection is running
     ├── MissingReadModel    a table the projection owns does not exist (run the migrations)
     ├── ReadModelChanged    a table's columns changed while a shadow was built (a migration ran)
     └── UnfoldableEvent     a projection refuses one event: it is quarantined (see .quarantine)
"""

from __future__ import annotations

__all__ = ["MissingReadModel", "ProjectionError", "ReadModelChanged", "RebuildInProgress", "UnfoldableEvent"]


class ProjectionError(Exception):
    """Something prevented a projection command; the live read model is unchanged."""


class RebuildInProgress(ProjectionError):
    """Only one shadow build per projection runs at a time: they share the projection's lock."""


class MissingReadModel(ProjectionError):
    """The projection's tables are not in the database."""


class ReadModelChanged(ProjectionError):
    """The live tables no longer have the columns the shadow was built with; run it again."""


class UnfoldableEvent(ProjectionError):
    """Raised by a projection's ``apply`` for an event it cannot fold; the runner quarantines it."""
