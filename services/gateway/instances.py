"""Live module instances as the gateway knows them: from their heartbeats (the presence index).

One view for the module routes (an author's own module) and the operators' routes (every
module): which instance, which capabilities it serves now, its calls in flight, whether it is
leaving — and, when the module was registered through ``POST /v1/modules``, its tenant.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from .state import PRESENCE, USERS

__all__ = ["LiveInstance", "live_instances"]


class LiveInstance(msgspec.Struct):
    module_id: str
    instance_id: str
    tenant_id: str  # the module's owner; empty for a module no tenant registered (the platform's own)
    capabilities: list[str]
    in_flight: int
    leaving: bool  # it serves no new calls and finishes those it holds


def live_instances(app: web.Application, module_id: str | None = None) -> list[LiveInstance]:
    """Every live instance (of ``module_id``, if given), by module and instance."""
    modules = app[USERS].index.modules
    found = [
        LiveInstance(
            beat.module_id,
            beat.instance_id,
            modules[beat.module_id].tenant_id if beat.module_id in modules else "",
            sorted(beat.capabilities),
            beat.in_flight,
            beat.leaving,
        )
        for beat in app[PRESENCE].instances()
        if module_id is None or beat.module_id == module_id
    ]
    found.sort(key=lambda i: (i.module_id, i.instance_id))
    return found
