"""JetStream consumers that fold events into Postgres read models; checkpoints; rebuild."""

from __future__ import annotations

from .base import Projection
from .billing import BillingProjection
from .identity import IdentityProjection
from .registry import RegistryProjection
from .runner import ProjectionRunner, rebuild

PROJECTIONS: dict[str, Projection] = {p.name: p for p in (RegistryProjection(), IdentityProjection(), BillingProjection())}

__all__ = ["PROJECTIONS", "BillingProjection", "IdentityProjection", "Projection", "ProjectionRunner", "RegistryProjection", "rebuild"]
