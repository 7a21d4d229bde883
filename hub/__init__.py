"""The thin subject router: routing and streamed calls (in-process), presence, the registry, the hub process."""

from __future__ import annotations

from .presence import PresenceIndex
from .registry import InvalidManifest, Registrar, RegistryIndex
from .router import Router
from .service import Hub
from .streaming import CallStream

__all__ = ["CallStream", "Hub", "InvalidManifest", "PresenceIndex", "Registrar", "RegistryIndex", "Router"]
