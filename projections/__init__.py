"""JetStream consumers that fold events into Postgres read models; checkpoints; rebuild."""

from __future__ import annotations

from .base import Projection
from .identity import IdentityProjection
from .registry import RegistryProjection
from .runner import ProjectionRunner, rebuild
from .usage import UsageProjection

PROJECTIONS: dict[str, Projection] = {
    p.name: p for p in (RegistryProjection(), IdentityProjection(), UsageProjection())
}

__all__ = [
    "PROJECTIONS",
    "IdentityProjection",
    "Projection",
    "ProjectionRunner",
    "RegistryProjection",
    "UsageProjection",
    "rebuild",
]
