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

A module's own subjects (its direct route, control, presence and announcement) carry its module
id, never an instance id alone (drawn at run time), so the bus can grant a module's connection
exactly its own with wildcards: ``mcp.ctl.<module>.*``, ``hub.announce.<module>``. Of the events,
a module owned by a tenant receives that tenant's only, a platform module (owned by ``system``)
every tenant's (:func:`event_scope`).
"""

from __future__ import annotations

import re

__all__ = [
    "MODULES",
    "SYSTEM_TENANT",
    "InvalidSubjectToken",
    "announce",
    "call",
    "capability_queue",
    "control",
    "direct",
    "event",
    "event_scope",
    "heartbeat",
    "instance_of_control",
    "is_control",
    "leave",
    "record_request",
    "record_response",
    "registry",
    "validate_capability",
    "validate_topic_pattern",
    "validate_token",
]

_TOKEN = re.compile(r"[a-z0-9_-]{1,64}")
_CAPABILITY = re.compile(r"[a-z0-9_-]{1,64}(?:\.[a-z0-9_-]{1,64}){0,7}")
# A topic a module subscribes to: dotted tokens, any of them "*", optionally ending in ">".
_TOPIC_PATTERN = re.compile(r"(?:[a-z0-9_-]{1,64}|\*)(?:\.(?:[a-z0-9_-]{1,64}|\*)){0,7}(?:\.>)?|>")
_CONTROL = re.compile(r"mcp\.ctl\.[a-z0-9_-]{1,64}\.[a-z0-9_-]{1,128}")

MODULES = "hub.modules"
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


def registry(module: str, event_name: str) -> str:
    return f"registry.{module}.{event_name}"
