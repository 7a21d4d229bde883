"""The streams of the log, declared once for any topology.

The platform's preparation (``dai up``, or ``dai streams ensure`` where an operator runs the
processes) calls :func:`ensure_streams`, which creates missing streams and updates changed
ones, so the configuration in this file is the configuration on the server.

Replicas are the one setting that depends on the topology: 1 on a single server, 3 in a
cluster (Raft needs a majority: three servers survive the loss of one). ``DAI_STREAM_REPLICAS``
(or the ``replicas`` argument) says which; a process that is not told keeps what the server
has, so nothing started without it ever shrinks a cluster's streams. The key-value buckets of
the identity service follow the same rule (:func:`stream_replicas`).

Durability: the streams whose loss is money or identity (:data:`DURABLE_STREAMS`) must survive
a crash of every node at once, which replication alone does not give (an acknowledged write
may sit in the page cache of all three). ``nats.conf`` therefore sets ``sync_interval:
always``: the server fsyncs every write before it acknowledges it. The setting is the
server's, not a stream's (JetStream's per-stream ``persist_mode`` only offers a weaker, R1-only
mode), so the other streams pay for it too; ``tests/bench/bench_durability.py`` measures what
it costs.

The names of the streams are the constants here (``MCP_STREAM`` …); what each captures is
spelled by :mod:`.subjects`.
"""

from __future__ import annotations

import dataclasses
import os

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
    "DURABLE_STREAMS",
    "IDENTITY_STREAM",
    "MCP_STREAM",
    "RATELIMIT_STREAM",
    "REGISTRY_STREAM",
    "REPLICAS_ENV",
    "STREAMS",
    "USAGE_STREAM",
    "WRONG_LAST_SEQUENCE",
    "ensure_streams",
    "stream_replicas",
]

MCP_STREAM = "MCP"
USAGE_STREAM = "USAGE"
RATELIMIT_STREAM = "RATELIMIT"
IDENTITY_STREAM = "IDENTITY"
BILLING_STREAM = "BILLING"
REGISTRY_STREAM = "REGISTRY"

_DAY = 24 * 3600.0

REPLICAS_ENV = "DAI_STREAM_REPLICAS"
_MAX_REPLICAS = 5  # JetStream's own limit

# An acknowledged write to these must survive the crash of every server: money and identity.
DURABLE_STREAMS = frozenset({USAGE_STREAM, BILLING_STREAM, IDENTITY_STREAM, RATELIMIT_STREAM})

# JetStream's error codes when Nats-Expected-Last-Subject-Sequence did not match: another writer
# won. A replicated stream's leader answers 10164 (without the sequence) when the subject's
# previous append is still being replicated, a single server 10071.
WRONG_LAST_SEQUENCE = frozenset({10071, 10164})

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


def stream_replicas() -> int | None:
    """The replicas ``DAI_STREAM_REPLICAS`` asks for, or ``None`` when it is not set.

    Raises ``ValueError`` with the fix when the value is not a whole number from 1 to 5."""
    raw = os.environ.get(REPLICAS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_REPLICAS:
        raise ValueError(
            f"{REPLICAS_ENV}={raw!r}: set it to the number of copies of each stream, 1 on one server,"
            f" 3 in a cluster of three or more (at most {_MAX_REPLICAS})."
        )
    return int(raw)


async def ensure_streams(js: JetStreamContext, replicas: int | None = None) -> None:
    """Create every stream of :data:`STREAMS`, or update it to the declared configuration.

    ``replicas`` (default: :func:`stream_replicas`) is each stream's number of copies; when
    neither says, a new stream gets one and an existing one keeps what it has."""
    wanted = replicas if replicas is not None else stream_replicas()
    for declared in STREAMS:
        assert declared.name is not None, "every stream of STREAMS is declared with its name"
        try:
            info = await js.stream_info(declared.name)
        except NotFoundError:
            await js.add_stream(dataclasses.replace(declared, num_replicas=wanted or 1))
        else:
            await js.update_stream(dataclasses.replace(declared, num_replicas=wanted or info.config.num_replicas))
