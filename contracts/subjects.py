"""Subject names: the one place that knows how the platform spells its NATS subjects.

Live traffic (core NATS, never stored):

    mcp.call.<tenant>.<capability…>              a call routed by capability (queue group per capability)
    mcp.direct.<module>.<tenant>.<capability…>   a call routed to one module

The log (JetStream, stream MCP):

    mcp.req.<tenant>.<capability…>   the record of a request
    mcp.res.<tenant>.<capability…>   the record of its response, error or stream chunk
    mcp.evt.<tenant>.<capability…>   events and broadcasts

Calls travel on subjects that no stream captures so that NATS answers "no responders" the
instant no module serves them; a stream listening on the call subject would count as interest
and turn that instant answer into a timeout. The caller records the request and the module
records its answer, each with one extra core-NATS publish.

Presence (core NATS): ``hub.heartbeat.<module>``, ``hub.leave.<module>``; the hub answers
``hub.announce`` and ``hub.modules``.
"""

from __future__ import annotations

import re

__all__ = [
    "ANNOUNCE",
    "MODULES",
    "InvalidSubjectToken",
    "call",
    "capability_queue",
    "direct",
    "event",
    "heartbeat",
    "leave",
    "record_request",
    "record_response",
    "registry",
    "validate_capability",
    "validate_token",
]

_TOKEN = re.compile(r"[a-z0-9_-]{1,64}")
_CAPABILITY = re.compile(r"[a-z0-9_-]{1,64}(?:\.[a-z0-9_-]{1,64}){0,7}")

ANNOUNCE = "hub.announce"
MODULES = "hub.modules"


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


def heartbeat(module: str) -> str:
    return f"hub.heartbeat.{module}"


def leave(module: str) -> str:
    return f"hub.leave.{module}"


def registry(module: str, event_name: str) -> str:
    return f"registry.{module}.{event_name}"
