"""Which module instances are alive right now, from their heartbeats.

An instance is alive until it says it leaves or misses three heartbeats in a row, so a module
that dies without a word disappears within three heartbeat intervals (3 s by default). A
heartbeat or leave counts only for the module its subject names (``hub.heartbeat.<module>``):
one module cannot keep another's instance alive or make it leave.
"""

from __future__ import annotations

import logging
import time

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from democratic_ai.contracts import presence, subjects

__all__ = ["PresenceIndex"]

log = logging.getLogger(__name__)

MISSED_HEARTBEATS = 3


class PresenceIndex:
    def __init__(self) -> None:
        # (module id, instance id) → (beat, deadline): keyed by both, so that a module's presence
        # messages can only ever touch entries under its own id.
        self._alive: dict[tuple[str, str], tuple[presence.Heartbeat, float]] = {}
        self._subscriptions: list[Subscription] = []

    async def start(self, nc: NATS) -> None:
        self._subscriptions = [
            await nc.subscribe(subjects.heartbeat("*"), cb=self._on_heartbeat),
            await nc.subscribe(subjects.leave("*"), cb=self._on_leave),
        ]

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        self._subscriptions.clear()

    def instances(self) -> list[presence.Heartbeat]:
        """The live instances, oldest knowledge pruned first."""
        now = time.monotonic()
        for key in [k for k, (_, deadline) in self._alive.items() if deadline < now]:
            del self._alive[key]
        return [beat for beat, _ in self._alive.values()]

    def serving(self, capability: str) -> int:
        """How many live instances serve ``capability``."""
        return sum(1 for beat in self.instances() if capability in beat.capabilities)

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = presence.decode_heartbeat(msg.data)
        except msgspec.DecodeError:
            log.warning("ignored a malformed heartbeat on %s", msg.subject)
            return
        if not _speaks_for(msg.subject, beat.module_id):
            log.warning("ignored a heartbeat of %s on %s", beat.module_id, msg.subject)
            return
        self._alive[beat.module_id, beat.instance_id] = (beat, time.monotonic() + MISSED_HEARTBEATS * beat.interval)

    async def _on_leave(self, msg: Msg) -> None:
        try:
            leave = presence.decode_leave(msg.data)
        except msgspec.DecodeError:
            log.warning("ignored a malformed leave on %s", msg.subject)
            return
        if not _speaks_for(msg.subject, leave.module_id):
            log.warning("ignored a leave of %s on %s", leave.module_id, msg.subject)
            return
        self._alive.pop((leave.module_id, leave.instance_id), None)


def _speaks_for(subject: str, module_id: str) -> bool:
    """Whether a presence message on ``subject`` is about ``module_id``.

    The bus lets a module publish presence under its own id only, so the subject's last token
    says who is speaking, and the body must agree.
    """
    return subject.rsplit(".", 1)[-1] == module_id
