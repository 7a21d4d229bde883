"""The HTTP edge gateway."""

from __future__ import annotations

from .app import create_app, create_runner
from .config import GatewayConfig, body_ceiling_from_env

__all__ = ["GatewayConfig", "body_ceiling_from_env", "create_app", "create_runner"]
