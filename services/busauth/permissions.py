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

__all__ = ["PLATFORM_TENANT", "ModuleGrant", "inbox_prefix", "module_permissions"]

PLATFORM_TENANT = "system"

_NEVER_PUBLISH = ["iam.>", "usage.>", "billing.>", "ratelimit.>", "registry.>", "$JS.>", "$KV.>", "$O.>", "$SYS.>"]
_NEVER_SUBSCRIBE = ["mcp.req.>", "mcp.res.>", "iam.>", "usage.>", "billing.>", "ratelimit.>", "registry.>",
                    "$JS.>", "$KV.>", "$O.>", "$SYS.>"]


class ModuleGrant(Protocol):
    """What the permissions depend on: who owns the module and what it registered."""

    tenant_id: str
    module_id: str
    capabilities: Sequence[str]


def inbox_prefix(module_id: str) -> str:
    """The only inbox a module may subscribe to: answers to its own requests arrive there."""
    return f"_INBOX.module.{module_id}"


def module_permissions(module: ModuleGrant) -> dict[str, Any]:
    """The ``pub``/``sub`` claims of a module's user JWT."""
    m = module.module_id
    events = "mcp.evt.*.>" if module.tenant_id == PLATFORM_TENANT else f"mcp.evt.{module.tenant_id}.>"
    subscribe = [
        *(f"mcp.call.*.{capability} {capability}" for capability in module.capabilities),
        *(f"mcp.direct.{m}.*.{capability} {m}" for capability in module.capabilities),
        f"mcp.ctl.{m}.*",
        events,
        f"{inbox_prefix(m)}.>",
        "$SRV.PING", "$SRV.INFO", "$SRV.STATS", f"$SRV.*.{m}", f"$SRV.*.{m}.*",
    ]
    publish = [
        *(f"mcp.res.*.{capability}" for capability in module.capabilities),
        f"hub.announce.{m}", f"hub.heartbeat.{m}", f"hub.leave.{m}",
        # Answers, stream chunks and micro replies go to the caller's inbox.
        "_INBOX.>",
        # Calls of its own, with their records and their streams' control messages.
        "mcp.call.>", "mcp.direct.>", "mcp.req.>", "mcp.ctl.>",
        events,
    ]
    return {
        "pub": {"allow": publish, "deny": _NEVER_PUBLISH},
        "sub": {"allow": subscribe, "deny": _NEVER_SUBSCRIBE},
    }
