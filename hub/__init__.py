"""The thin subject router: routing (in-process), presence, the registry, and the hub process."""

from __future__ import annotations

from .presence import PresenceIndex
from .registry import InvalidManifest, Registrar, RegistryIndex
from .router import Router
from .service import Hub

__all__ = ["Hub", "InvalidManifest", "PresenceIndex", "Registrar", "RegistryIndex", "Router"]
