"""Which module instances are alive right now, from their heartbeats; and telling when one dies.

An instance is listed until it says it leaves or misses three heartbeats in a row, so a module
that dies without a word disappears within three heartbeat intervals (3 s by default). A
heartbeat or leave counts only for the module its subject names (``hub.heartbeat.<module>``):
one module cannot keep another's instance alive or make it leave.

:meth:`PresenceIndex.watch` tells a caller when the instance running its call is dead — missed
three heartbeats — which is not the same as gone from the list: an instance that left keeps
heartbeating (``leaving``) while it finishes the calls it holds. One timer per watched instance,
however many calls watch it; none for instances nobody watches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from democratic_ai.contracts import ErrorCode, presence, subjects
from democratic_ai.contracts.presence import MISSED_HEARTBEATS

__all__ = ["PresenceIndex", "died"]

log = logging.getLogger(__name__)

# How long an instance's last heartbeat is remembered after it counts as dead: a late watch of
# it (a call it acknowledged just before it died) still learns so at once.
_REMEMBER_DEAD_SECONDS = 60.0

Instance = tuple[str, str]  # (module id, instance id)


class _Watch:
    """The callers waiting to hear that one instance died, and the timer that checks it."""

    __slots__ = ("callbacks", "timer")

    def __init__(self) -> None:
        self.callbacks: set[Callable[[], None]] = set()
        self.timer: asyncio.TimerHandle | None = None  # None until the instance has been heard


class PresenceIndex:
    def __init__(self) -> None:
        # (module id, instance id) → (beat, deadline): keyed by both, so that a module's presence
        # messages can only ever touch entries under its own id.
        self._alive: dict[Instance, tuple[presence.Heartbeat, float]] = {}
        # Every instance heard, leaving ones included → when it counts as dead (time.monotonic()).
        self._dead_at: dict[Instance, float] = {}
        self._watches: dict[Instance, _Watch] = {}
        self._next_forget = 0.0
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
        for watch in self._watches.values():
            if watch.timer is not None:
                watch.timer.cancel()
        self._watches.clear()

    def instances(self) -> list[presence.Heartbeat]:
        """The live instances, oldest knowledge pruned first."""
        now = time.monotonic()
        for key in [k for k, (_, deadline) in self._alive.items() if deadline < now]:
            del self._alive[key]
        return [beat for beat, _ in self._alive.values()]

    def serving(self, capability: str) -> int:
        """How many live instances serve ``capability``."""
        return sum(1 for beat in self.instances() if capability in beat.capabilities)

    def watch(self, module_id: str, instance_id: str, on_dead: Callable[[], None]) -> Callable[[], None]:
        """Call ``on_dead()`` once, when the instance has missed three heartbeats; returns the unwatch.

        Until the instance has been heard at all, it is not judged: a caller that learned of it
        first then waits for its ttl, as before. ``on_dead`` runs in the event loop and must not
        block. Call the returned function when the call ends, whichever way.
        """
        key = (module_id, instance_id)
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = _Watch()
            self._arm(key, watch)
        watch.callbacks.add(on_dead)

        def unwatch() -> None:
            watch.callbacks.discard(on_dead)
            if not watch.callbacks and self._watches.get(key) is watch:
                del self._watches[key]
                if watch.timer is not None:
                    watch.timer.cancel()

        return unwatch

    def _arm(self, key: Instance, watch: _Watch) -> None:
        dead_at = self._dead_at.get(key)
        if dead_at is not None:
            watch.timer = asyncio.get_running_loop().call_later(max(0.0, dead_at - time.monotonic()), self._check, key)

    def _check(self, key: Instance) -> None:
        """The timer of a watched instance: it died, or heartbeats moved its deadline on."""
        watch = self._watches.get(key)
        if watch is None:
            return
        remaining = self._dead_at[key] - time.monotonic()
        if remaining > 0:
            watch.timer = asyncio.get_running_loop().call_later(remaining, self._check, key)
            return
        del self._watches[key]
        log.warning(
            "instance %s of module %s missed %d heartbeats; failing the %d calls it held",
            key[1],
            key[0],
            MISSED_HEARTBEATS,
            len(watch.callbacks),
        )
        for on_dead in list(watch.callbacks):
            on_dead()

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = presence.decode_heartbeat(msg.data)
        except msgspec.DecodeError:
            log.warning("ignored a malformed heartbeat on %s", msg.subject)
            return
        if not _speaks_for(msg.subject, beat.module_id):
            log.warning("ignored a heartbeat of %s on %s", beat.module_id, msg.subject)
            return
        key = (beat.module_id, beat.instance_id)
        now = time.monotonic()
        dead_at = now + MISSED_HEARTBEATS * beat.interval
        self._dead_at[key] = dead_at
        if beat.leaving:
            self._alive.pop(key, None)
        else:
            self._alive[key] = (beat, dead_at)
        watch = self._watches.get(key)
        if watch is not None and watch.timer is None:
            self._arm(key, watch)  # first heard after a call named it
        if now >= self._next_forget:
            self._forget(now)

    def _forget(self, now: float) -> None:
        """Drop instances dead for a while, so the memory of the dead stays bounded."""
        self._next_forget = now + _REMEMBER_DEAD_SECONDS
        for key in [k for k, dead_at in self._dead_at.items() if dead_at + _REMEMBER_DEAD_SECONDS < now]:
            if key not in self._watches:
                del self._dead_at[key]

    async def _on_leave(self, msg: Msg) -> None:
        try:
            leave = presence.decode_leave(msg.data)
        except msgspec.DecodeError:
            log.warning("ignored a malformed leave on %s", msg.subject)
            return
        if not _speaks_for(msg.subject, leave.module_id):
            log.warning("ignored a leave of %s on %s", leave.module_id, msg.subject)
            return
        # Listed no more; but not dead: it may still be finishing calls, heartbeating as it goes.
        self._alive.pop((leave.module_id, leave.instance_id), None)


def died(module_id: str, instance_id: str, capability: str) -> tuple[ErrorCode, str, dict[str, object]]:
    """The error of a call whose instance died while it held the call: code, text, details."""
    return (
        ErrorCode.MODULE_UNAVAILABLE,
        (
            f"module {module_id!r} stopped while it ran {capability!r}: its instance missed {MISSED_HEARTBEATS}"
            " heartbeats in a row; the call may have partly run"
        ),
        {
            "module_id": module_id,
            "instance_id": instance_id,
            "capability": capability,
            "missed_heartbeats": MISSED_HEARTBEATS,
        },
    )


def _speaks_for(subject: str, module_id: str) -> bool:
    """Whether a presence message on ``subject`` is about ``module_id``.

    The bus lets a module publish presence under its own id only, so the subject's last token
    says who is speaking, and the body must agree.
    """
    return subject.rsplit(".", 1)[-1] == module_id
