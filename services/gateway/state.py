"""Typed keys of the gateway application's shared state."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NATS

from democratic_ai.hub import PresenceIndex, RegistryIndex, Router
from democratic_ai.services.identity import ApiKeyIndex

from .config import GatewayConfig

__all__ = ["API_KEYS", "CONFIG", "NC", "POOL", "PRESENCE", "REGISTRY", "ROUTER"]

API_KEYS = web.AppKey("api_keys", ApiKeyIndex)
CONFIG = web.AppKey("config", GatewayConfig)
NC = web.AppKey("nc", NATS)
POOL = web.AppKey("pool", asyncpg.Pool)
PRESENCE = web.AppKey("presence", PresenceIndex)
REGISTRY = web.AppKey("registry", RegistryIndex)
ROUTER = web.AppKey("router", Router)
