"""The streams of the log, declared once.

Every process that starts (``dai up``, the hub, the gateway, a projection worker) calls
:func:`ensure_streams`, which creates missing streams and updates changed ones, so the
configuration in this file is the configuration on the server.

The names of the streams are the constants here (``MCP_STREAM`` …); what each captures is
spelled by :mod:`.subjects`.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from .partitions import USAGE_PARTITIONS
from .subjects import (
    ALL_BILLING,
    ALL_EVENTS,
    ALL_IDENTITY,
    ALL_RATELIMIT,
    ALL_REGISTRY,
    ALL_REQUESTS,
    ALL_RESPONSES,
    ALL_USAGE,
)

__all__ = [
    "BILLING_STREAM",
    "IDENTITY_STREAM",
    "MCP_STREAM",
    "RATELIMIT_STREAM",
    "REGISTRY_STREAM",
    "STREAMS",
    "USAGE_STREAM",
    "WRONG_LAST_SEQUENCE",
    "ensure_streams",
]

MCP_STREAM = "MCP"
USAGE_STREAM = "USAGE"
RATELIMIT_STREAM = "RATELIMIT"
IDENTITY_STREAM = "IDENTITY"
BILLING_STREAM = "BILLING"
REGISTRY_STREAM = "REGISTRY"

_DAY = 24 * 3600.0

# JetStream's error code when Nats-Expected-Last-Subject-Sequence did not match: another writer won.
WRONG_LAST_SEQUENCE = 10071

STREAMS: tuple[StreamConfig, ...] = (
    StreamConfig(
        name=MCP_STREAM,
        description="Every MCP message: requests, responses, errors, stream chunks and events.",
        subjects=[ALL_REQUESTS, ALL_RESPONSES, ALL_EVENTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=30 * _DAY,
        discard=DiscardPolicy.OLD,
        duplicate_window=120.0,
        # Records are published with core NATS: acknowledging them would cost the hot path a
        # round trip and is not needed, since a lost record is not a lost call.
        no_ack=True,
    ),
    StreamConfig(
        name=USAGE_STREAM,
        description="Usage events: api_calls, compute_ms, bytes_in, bytes_out, storage_bytes.",
        subjects=[ALL_USAGE],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=400 * _DAY,  # a year of invoices can be recomputed from it
        duplicate_window=600.0,
        # Appends the tenant's partition to every subject, so usage workers can split the tenants.
        subject_transform=USAGE_PARTITIONS.transform(),
    ),
    StreamConfig(
        name=RATELIMIT_STREAM,
        description="The state of the rate limits: quota leases of the call limits, meter events of the buckets.",
        subjects=[ALL_RATELIMIT],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        # A lease or meter event matters for minutes at most; a day keeps enough to rebuild any limit.
        max_age=_DAY,
        duplicate_window=120.0,
        # A replica whose optimistic append lost reads the winner's lease with a direct get.
        allow_direct=True,
    ),
    StreamConfig(
        name=IDENTITY_STREAM,
        description="Tenants, users, roles, API keys and token revocations.",
        subjects=[ALL_IDENTITY],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=600.0,
    ),
    StreamConfig(
        name=BILLING_STREAM,
        description="Subscriptions, plans, invoices and payments.",
        subjects=[ALL_BILLING],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=24 * 3600.0,
    ),
    StreamConfig(
        name=REGISTRY_STREAM,
        description="Modules and their capabilities with JSON Schemas.",
        subjects=[ALL_REGISTRY],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=600.0,
    ),
)


async def ensure_streams(js: JetStreamContext) -> None:
    """Create every stream of :data:`STREAMS`, or update it to the declared configuration."""
    for config in STREAMS:
        assert config.name is not None, "every stream of STREAMS is declared with its name"
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
        else:
            await js.update_stream(config)
