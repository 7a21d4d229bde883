"""The HTTP edge gateway."""

from __future__ import annotations

from .app import create_app, create_runner
from .config import GatewayConfig

__all__ = ["GatewayConfig", "create_app", "create_runner"]
