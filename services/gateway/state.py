"""Typed keys of the gateway application's shared state."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NATS

from democratic_ai.hub import PresenceIndex, RegistryIndex
from democratic_ai.services.billing import BillingService, Payments
from democratic_ai.services.identity import IdentityIndex, IdentityService, KeyRing, UserKeyStore
from democratic_ai.services.metering import Metering

from .config import GatewayConfig
from .credential_watch import CredentialWatch
from .gate import CallGate
from .input_limits import InputLimits
from .metrics import GatewayMetrics

__all__ = [
    "BILLING",
    "CONFIG",
    "CREDENTIALS",
    "GATE",
    "IDENTITY",
    "INPUT_LIMITS",
    "KEY_RING",
    "METERING",
    "METRICS",
    "NC",
    "PAYMENTS",
    "POOL",
    "PRESENCE",
    "REGISTRY",
    "USERS",
    "USER_KEYS",
]

CONFIG = web.AppKey("config", GatewayConfig)
CREDENTIALS = web.AppKey("credentials", CredentialWatch)
GATE = web.AppKey("gate", CallGate)  # the one way a call enters (:mod:`.gate`)
NC = web.AppKey("nc", NATS)
POOL = web.AppKey("pool", asyncpg.Pool)
PRESENCE = web.AppKey("presence", PresenceIndex)
REGISTRY = web.AppKey("registry", RegistryIndex)
IDENTITY = web.AppKey("identity", IdentityIndex)
INPUT_LIMITS = web.AppKey("input_limits", InputLimits)  # set once NATS is connected (its max_payload)
KEY_RING = web.AppKey("key_ring", KeyRing)
USERS = web.AppKey("users", IdentityService)
USER_KEYS = web.AppKey("user_keys", UserKeyStore)
BILLING = web.AppKey("billing", BillingService)
PAYMENTS = web.AppKey("payments", Payments)
METERING = web.AppKey("metering", Metering)
METRICS = web.AppKey("metrics", GatewayMetrics)
