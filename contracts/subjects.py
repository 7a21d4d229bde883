"""Subject names: the one place that knows how the platform spells its NATS subjects.

Live traffic (core NATS, never stored):

    mcp.call.<tenant>.<capability…>              a call routed by capability (queue group per capability)
    mcp.direct.<module>.<tenant>.<capability…>   a call routed to one module
    mcp.ctl.<module>.<instance>                  CANCEL and STREAM_ACK for the streamed calls an
                                                 instance runs (named in its ACCEPTED answer)

The log (JetStream, stream MCP):

    mcp.req.<tenant>.<capability…>   the record of a request
    mcp.res.<tenant>.<capability…>   the record of its response, error or stream chunk
    mcp.evt.<tenant>.<topic…>        events and broadcasts: published here, delivered from here

Calls travel on subjects that no stream captures so that NATS answers "no responders" the
instant no module serves them; a stream listening on the call subject would count as interest
and turn that instant answer into a timeout. The caller records the request and the module
records its answer, each with one extra core-NATS publish. Events need no answer, so they are
published once, on their record subject, and modules subscribe to it.

Presence (core NATS): ``hub.heartbeat.<module>``, ``hub.leave.<module>``; the hub answers
``hub.announce.<module>`` and ``hub.modules``.

The other streams (their events are described beside them, in ``contracts/*_events.py``):

    registry.<module>.<event>                REGISTRY   registered, updated
    iam.<tenant>.<aggregate>.<id>            IDENTITY   tenant, email, user, api_key, session,
                                                        token, login, module
    usage.<tenant>.<metric>                  USAGE      one event per call (or write) and metric
    ratelimit.<tenant>.<holder>              RATELIMIT  quota leases: holder ``tenant`` or ``key-<id>``
    ratelimit.<tenant>.meter                 RATELIMIT  what a replica's calls took from the buckets
    billing.<tenant>.subscription.<tenant>   BILLING    the tenant's subscription
    billing.<tenant>.customer.<tenant>       BILLING    its Stripe customer
    billing.<tenant>.invoice.<YYYY-MM>       BILLING    one invoice per tenant and month, ever
    billing.<tenant>.stripe_event.<hash>     BILLING    one per Stripe event

Every function here builds a subject from its tokens; a token may be a wildcard (``*``, or ``>``
last), which makes the subject a filter: ``invoice_subject("acme", "*")`` is every invoice of
``acme``. The ``ALL_*`` constants are each family's every subject, and the stream names are in
:mod:`.streams`.

A module's own subjects (its direct route, control, presence and announcement) carry its module
id, never an instance id alone (drawn at run time), so the bus can grant a module's connection
exactly its own with wildcards: ``mcp.ctl.<module>.*``, ``hub.announce.<module>``. Of the events,
a module owned by a tenant receives that tenant's only, a platform module (owned by ``system``)
every tenant's (:func:`event_scope`).
"""

from __future__ import annotations

import re

__all__ = [
    "ALL_BILLING",
    "ALL_CALLS",
    "ALL_CONTROL",
    "ALL_DIRECT",
    "ALL_EVENTS",
    "ALL_IDENTITY",
    "ALL_RATELIMIT",
    "ALL_REGISTRY",
    "ALL_REQUESTS",
    "ALL_RESPONSES",
    "ALL_USAGE",
    "MODULES",
    "SYSTEM_TENANT",
    "InvalidSubjectToken",
    "announce",
    "call",
    "capability_queue",
    "control",
    "customer_subject",
    "direct",
    "event",
    "event_queue",
    "event_scope",
    "heartbeat",
    "identity_subject",
    "instance_of_control",
    "invoice_subject",
    "is_control",
    "leave",
    "meter_subject",
    "module_inbox",
    "of_tenant",
    "quota_subject",
    "record_request",
    "record_response",
    "records",
    "registry",
    "stripe_event_subject",
    "subscription_subject",
    "usage_subject",
    "validate_capability",
    "validate_token",
    "validate_topic_pattern",
]

_TOKEN = re.compile(r"[a-z0-9_-]{1,64}")
_CAPABILITY = re.compile(r"[a-z0-9_-]{1,64}(?:\.[a-z0-9_-]{1,64}){0,7}")
# A topic a module subscribes to: dotted tokens, any of them "*", optionally ending in ">".
_TOPIC_PATTERN = re.compile(r"(?:[a-z0-9_-]{1,64}|\*)(?:\.(?:[a-z0-9_-]{1,64}|\*)){0,7}(?:\.>)?|>")
_CONTROL = re.compile(r"mcp\.ctl\.[a-z0-9_-]{1,64}\.[a-z0-9_-]{1,128}")

MODULES = "hub.modules"

# Every subject of a family: what its stream captures, or what a permission grants or refuses.
ALL_CALLS = "mcp.call.>"
ALL_DIRECT = "mcp.direct.>"
ALL_CONTROL = "mcp.ctl.>"
ALL_REQUESTS = "mcp.req.>"
ALL_RESPONSES = "mcp.res.>"
ALL_EVENTS = "mcp.evt.>"
ALL_REGISTRY = "registry.>"
ALL_IDENTITY = "iam.>"
ALL_USAGE = "usage.>"
ALL_RATELIMIT = "ratelimit.>"
ALL_BILLING = "billing.>"
# The families whose second token is the tenant (:func:`of_tenant`).
_TENANT_FIRST = (ALL_IDENTITY, ALL_USAGE, ALL_RATELIMIT, ALL_BILLING)
# The tenant that owns the platform's own modules: they serve and hear every tenant.
SYSTEM_TENANT = "system"


class InvalidSubjectToken(ValueError):
    """A tenant, module or capability name that cannot be part of a subject."""


def validate_token(value: str, what: str) -> str:
    """Return ``value`` if it is one subject token (lowercase ``[a-z0-9_-]``, 1–64 chars)."""
    if not _TOKEN.fullmatch(value):
        raise InvalidSubjectToken(
            f"{what} {value!r} is not a valid name: use 1-64 characters of lowercase a-z, 0-9, '_' or '-'."
        )
    return value


def validate_capability(value: str) -> str:
    """Return ``value`` if it is a capability: one to eight dotted tokens, e.g. ``text.summarize``."""
    if not _CAPABILITY.fullmatch(value):
        raise InvalidSubjectToken(
            f"capability {value!r} is not a valid name: use dotted lowercase words of a-z, 0-9, '_' or '-',"
            " e.g. 'text.summarize'."
        )
    return value


def validate_topic_pattern(value: str) -> str:
    """Return ``value`` if it is an event topic to subscribe to: ``orders.created``, ``orders.*``, ``orders.>``."""
    if not _TOPIC_PATTERN.fullmatch(value):
        raise InvalidSubjectToken(
            f"event topic {value!r} is not valid: use dotted lowercase words of a-z, 0-9, '_' or '-',"
            " where a word may be '*' and the last may be '>', e.g. 'orders.created' or 'orders.>'."
        )
    return value


def call(tenant: str, capability: str) -> str:
    return f"mcp.call.{tenant}.{capability}"


def direct(module: str, tenant: str, capability: str) -> str:
    return f"mcp.direct.{module}.{tenant}.{capability}"


def capability_queue(capability: str) -> str:
    """The queue group all replicas of all modules serving ``capability`` share."""
    return capability


def event_queue(module: str, handler: str) -> str:
    """The queue group of one event handler of a module: its replicas share the events, while each
    of its handlers still gets every event it subscribed to."""
    return f"{module}.{handler}"


def record_request(tenant: str, capability: str) -> str:
    return f"mcp.req.{tenant}.{capability}"


def record_response(tenant: str, capability: str) -> str:
    return f"mcp.res.{tenant}.{capability}"


def event(tenant: str, capability: str) -> str:
    return f"mcp.evt.{tenant}.{capability}"


def event_scope(owner_tenant: str) -> str:
    """The tenant token of the events a module owned by ``owner_tenant`` receives: its own, or ``*`` for ``system``."""
    return "*" if owner_tenant == SYSTEM_TENANT else owner_tenant


def control(module: str, instance_id: str) -> str:
    """Where a module instance takes CANCEL and STREAM_ACK messages for its streamed calls."""
    return f"mcp.ctl.{module}.{instance_id}"


def module_inbox(module: str) -> str:
    """The inbox prefix of a module's connection: the only inbox the bus lets it subscribe to."""
    return f"_INBOX.module.{module}"


def is_control(subject: str) -> bool:
    """Whether ``subject`` is a control subject: a caller sends nothing anywhere else a module names."""
    return _CONTROL.fullmatch(subject) is not None


def instance_of_control(subject: str) -> tuple[str, str] | None:
    """The (module, instance id) whose control subject ``subject`` is; None if it is not one."""
    if not is_control(subject):
        return None
    _, _, module, instance = subject.split(".")
    return module, instance


def announce(module: str) -> str:
    """Where a module asks the hub to record its manifest; the hub answers ``ok`` or ``refused: …``."""
    return f"hub.announce.{module}"


def heartbeat(module: str) -> str:
    return f"hub.heartbeat.{module}"


def leave(module: str) -> str:
    return f"hub.leave.{module}"


def records(tenant: str = "*", capability: str = ">") -> str:
    """The MCP stream's records (requests, responses, events) of ``tenant`` and ``capability``: a filter."""
    return f"mcp.*.{tenant}.{capability}"


def registry(module: str, event_name: str) -> str:
    return f"registry.{module}.{event_name}"


def identity_subject(tenant_id: str, aggregate: str, aggregate_id: str) -> str:
    """An IDENTITY aggregate: ``iam.<tenant>.<aggregate>.<id>``, e.g. ``iam.acme.user.<user id>``."""
    return f"iam.{tenant_id}.{aggregate}.{aggregate_id}"


def usage_subject(tenant_id: str, metric: str) -> str:
    return f"usage.{tenant_id}.{metric}"


def quota_subject(tenant_id: str, holder: str) -> str:
    """The leases of one limit: ``holder`` is ``tenant`` (the plan's) or ``key-<api key id>``."""
    return f"ratelimit.{tenant_id}.{holder}"


def meter_subject(tenant_id: str) -> str:
    return f"ratelimit.{tenant_id}.meter"


def subscription_subject(tenant_id: str) -> str:
    return f"billing.{tenant_id}.subscription.{tenant_id}"


def customer_subject(tenant_id: str) -> str:
    return f"billing.{tenant_id}.customer.{tenant_id}"


def invoice_subject(tenant_id: str, period: str) -> str:
    return f"billing.{tenant_id}.invoice.{period}"


def stripe_event_subject(tenant_id: str, event_hash: str) -> str:
    return f"billing.{tenant_id}.stripe_event.{event_hash}"


def of_tenant(family: str, tenant_id: str) -> str:
    """Every subject of ``tenant_id`` in a family whose second token is the tenant:
    ``of_tenant(ALL_USAGE, "acme")`` is ``usage.acme.>``."""
    if family not in _TENANT_FIRST:
        raise ValueError(f"the subjects of {family!r} do not begin with a tenant")
    return f"{family.removesuffix('>')}{tenant_id}.>"
