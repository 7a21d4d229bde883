"""Events of the USAGE stream (what was used) and the RATELIMIT stream (what was admitted).

USAGE, subject ``usage.<tenant>.<metric>`` (:mod:`.subjects` spells them), one event per metric and call:

    usage.call      CallMetered     api_calls, compute_ms, bytes_in, bytes_out of one call
    usage.storage   StorageMetered  storage_bytes written (or, negative, freed) by a store

Each event is published with a deterministic ``Nats-Msg-Id`` (:func:`message_id`: the call
or operation id and the metric), so a retried or re-derived publish is dropped by JetStream's
duplicate window, and read models key their rows on the same pair. Every event of a call carries
the call's one :class:`Outcome` (decided by ``contracts/call_usage.py``); what is billable
is :data:`BILLABLE`: every metric of a ``success``, and the ``compute_ms`` of a call its caller
``cancelled``.

RATELIMIT, the state of the limits every gateway replica follows:

    ratelimit.<tenant>.<holder>   quota.leased    QuotaLeased     a replica took ``n`` calls of a
                                                                  sliding-window quota
                                  quota.returned  QuotaReturned   it gives back what it did not use
    ratelimit.<tenant>.meter      meter.consumed  MeterConsumed   what a replica's calls took from the
                                                                  tenant's compute and bandwidth buckets
                                                                  over the last fraction of a second

A holder is ``tenant`` (the plan's limit) or ``key-<api key id>``. Leases are appended with
``Nats-Expected-Last-Subject-Sequence`` on the holder's subject, so every grant is decided
knowing every earlier one (``services/metering/admission.py``). ``MeterConsumed`` sums the same
consumption the USAGE events record, per tenant and replica, so that following the limits costs
each replica a message per active tenant and interval rather than three per call of every
replica (``services/metering/meters.py``).

Every event carries a version ``v``; decoders ignore unknown fields, so older readers survive
newer writers. USAGE fields carry the limits of the usage read models (:mod:`.fields`; NUL is
left to PostgreSQL, see ``BoundedId``): an event outside them is quarantined by the projection,
and metering caps what a module reports (``contracts/call_usage.py``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import msgspec

from .fields import BoundedId as Id, Int64

__all__ = [
    "BILLABLE",
    "CallMetered",
    "MeterConsumed",
    "Metric",
    "Outcome",
    "QuotaLeased",
    "QuotaReturned",
    "RateLimitEvent",
    "StorageMetered",
    "UsageEvent",
    "decode_ratelimit_event",
    "decode_usage_event",
    "encode_event",
    "is_billable",
    "message_id",
]


class Metric(StrEnum):
    API_CALLS = "api_calls"
    COMPUTE_MS = "compute_ms"
    BYTES_IN = "bytes_in"
    BYTES_OUT = "bytes_out"
    STORAGE_BYTES = "storage_bytes"


class Outcome(StrEnum):
    """How a call ended; every usage event of the call carries the same one.

    The first three are as old as the USAGE stream; ``cancelled`` and ``timeout`` came later,
    so an older event never holds them (a call that ended so was recorded ``failed``) and still
    decodes and folds as it always did. The field is a string, not this enumeration, so that a
    reader older than a future outcome still folds the event.
    """

    SUCCESS = "success"  # the call answered: every metric billable
    CANCELLED = "cancelled"  # the caller cancelled or hung up: its compute_ms billable (it asked for the work)
    TIMEOUT = "timeout"  # its ttl passed first: recorded, not billed
    FAILED = "failed"  # the module or the routing failed: recorded, not billed
    RATE_LIMITED = "rate_limited"  # refused at the edge: recorded, not billed


BILLABLE: frozenset[tuple[str, str]] = frozenset(
    {(metric.value, Outcome.SUCCESS.value) for metric in Metric} | {(Metric.COMPUTE_MS.value, Outcome.CANCELLED.value)}
)
"""The (metric, outcome) pairs billing counts: every metric of a successful call, and the
compute time of a cancelled one. Nothing of a call that timed out, failed or was refused."""


def is_billable(metric: str, outcome: str) -> bool:
    """Whether usage of ``metric`` by a call that ended with ``outcome`` is billed."""
    return (metric, outcome) in BILLABLE


class _UsageEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1
    tenant_id: Id
    metric: Id  # a Metric
    value: Int64  # usage_events.value is bigint
    at: datetime  # UTC


class CallMetered(_UsageEvent, tag="usage.call", frozen=True):
    call_id: Id
    capability: Id
    module_id: Id = ""  # empty when no module answered (routing errors, rate limits)
    user_id: Id = ""
    api_key_id: Id = ""
    outcome: Id = Outcome.SUCCESS


class StorageMetered(_UsageEvent, tag="usage.storage", frozen=True):
    operation_id: Id  # the write's idempotency key: the same write is counted once
    store: Id  # what stores the data, e.g. a module id
    capability: Id = ""
    user_id: Id = ""
    api_key_id: Id = ""
    outcome: Id = Outcome.SUCCESS


UsageEvent = CallMetered | StorageMetered


class _RateLimitEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1
    tenant_id: str
    replica: str  # the gateway replica that wrote it


class QuotaLeased(_RateLimitEvent, tag="quota.leased", frozen=True):
    holder: str  # "tenant" or "key-<api key id>"
    n: int  # calls granted
    at: float  # UTC epoch seconds: the lease may be used from here …
    until: float  # … to here


class QuotaReturned(_RateLimitEvent, tag="quota.returned", frozen=True):
    holder: str
    lease_sequence: int  # the RATELIMIT stream sequence of the lease
    n: int  # calls of it that were not used


class MeterConsumed(_RateLimitEvent, tag="meter.consumed", frozen=True):
    since: float  # UTC epoch seconds: the calls ended between here …
    until: float  # … and here
    compute_ms: int = 0
    bandwidth_bytes: int = 0  # bytes in and out


RateLimitEvent = QuotaLeased | QuotaReturned | MeterConsumed

encode_event = msgspec.json.Encoder().encode
_usage_decoder = msgspec.json.Decoder(UsageEvent)
_ratelimit_decoder = msgspec.json.Decoder(RateLimitEvent)


def decode_usage_event(data: bytes) -> UsageEvent:
    """Decode a USAGE event; raises ``msgspec.ValidationError`` for a malformed one."""
    return _usage_decoder.decode(data)


def decode_ratelimit_event(data: bytes) -> RateLimitEvent:
    """Decode a RATELIMIT event; raises ``msgspec.ValidationError`` for a malformed one."""
    return _ratelimit_decoder.decode(data)


def message_id(event: UsageEvent) -> str:
    """The deterministic ``Nats-Msg-Id`` of a usage event: one per call (or write) and metric."""
    key = event.call_id if isinstance(event, CallMetered) else event.operation_id
    return f"{key}:{event.metric}"
