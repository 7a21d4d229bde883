"""What a module's connection may do on the bus — the permissions the auth callout grants.

A module may take the calls of the capabilities it registered (in their queue groups) and those
sent to it directly, publish the records of its answers, announce, heartbeat and leave under its
own id, answer NATS micro requests about itself, receive the events meant for it and make calls
of its own (module-to-module calls, which carry the tenant of the call being served). It can
publish nothing on ``iam.>``, ``usage.>``, ``billing.>``, ``ratelimit.>`` or ``registry.>`` and
touches no stream, consumer or KV bucket: the deny lists say so explicitly, so a mistake in the
allow lists cannot open them.

Events: a module owned by a tenant receives that tenant's events; a module of the platform
(owned by the ``system`` tenant) receives every tenant's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from democratic_ai.contracts import subjects
from democratic_ai.contracts.subjects import (
    ALL_BILLING,
    ALL_CALLS,
    ALL_CONTROL,
    ALL_DIRECT,
    ALL_IDENTITY,
    ALL_RATELIMIT,
    ALL_REGISTRY,
    ALL_REQUESTS,
    ALL_RESPONSES,
    ALL_USAGE,
)

__all__ = ["PLATFORM_TENANT", "ModuleGrant", "inbox_prefix", "module_permissions"]

PLATFORM_TENANT = subjects.SYSTEM_TENANT

_NEVER_PUBLISH = [ALL_IDENTITY, ALL_USAGE, ALL_BILLING, ALL_RATELIMIT, ALL_REGISTRY, "$JS.>", "$KV.>", "$O.>", "$SYS.>"]
_NEVER_SUBSCRIBE = [
    ALL_REQUESTS,
    ALL_RESPONSES,
    ALL_IDENTITY,
    ALL_USAGE,
    ALL_BILLING,
    ALL_RATELIMIT,
    ALL_REGISTRY,
    "$JS.>",
    "$KV.>",
    "$O.>",
    "$SYS.>",
]


class ModuleGrant(Protocol):
    """What the permissions depend on: who owns the module and what it registered."""

    tenant_id: str
    module_id: str
    capabilities: Sequence[str]


def inbox_prefix(module_id: str) -> str:
    """The only inbox a module may subscribe to: answers to its own requests arrive there."""
    return subjects.module_inbox(module_id)


def module_permissions(module: ModuleGrant) -> dict[str, Any]:
    """The ``pub``/``sub`` claims of a module's user JWT."""
    m = module.module_id
    events = subjects.event(subjects.event_scope(module.tenant_id), ">")  # "*" for a module of the platform
    subscribe = [
        *(
            f"{subjects.call('*', capability)} {subjects.capability_queue(capability)}"
            for capability in module.capabilities
        ),
        *(f"{subjects.direct(m, '*', capability)} {m}" for capability in module.capabilities),
        subjects.control(m, "*"),
        events,
        f"{inbox_prefix(m)}.>",
        "$SRV.PING",
        "$SRV.INFO",
        "$SRV.STATS",
        f"$SRV.*.{m}",
        f"$SRV.*.{m}.*",
    ]
    publish = [
        *(subjects.record_response("*", capability) for capability in module.capabilities),
        subjects.announce(m),
        subjects.heartbeat(m),
        subjects.leave(m),
        # Answers, stream chunks and micro replies go to the caller's inbox.
        "_INBOX.>",
        # Calls of its own, with their records and their streams' control messages.
        ALL_CALLS,
        ALL_DIRECT,
        ALL_REQUESTS,
        ALL_CONTROL,
        events,
    ]
    return {
        "pub": {"allow": publish, "deny": _NEVER_PUBLISH},
        "sub": {"allow": subscribe, "deny": _NEVER_SUBSCRIBE},
    }
