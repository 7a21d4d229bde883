"""Ends a long-lived connection (the WebSocket) once the credential it opened with no longer holds.

A WebSocket authenticates once and then lives on, so its credential is re-checked where it is
used. Each call re-checks the socket's :class:`Principal` against the identity index first
(:meth:`Watched.current`: a few dict lookups, no hashing, no signature check). An idle socket
is ended by this watch, which costs nothing while nothing changes — no polling:

- the index calls it with every event it folds; an event that can take a credential away (a key
  revoked, a user deactivated or given another role, a session ended, an access token revoked,
  a tenant suspended) re-checks the watched connections of that event's tenant, at once;
- a credential that expires by itself (an API key's ``expires_at``, an access token's ``exp``)
  ends its connection by a timer set for that instant.

A connection whose credential resolves to other permissions than it opened with (a role change)
is ended as well: its client connects again and gets the new ones. Every gateway follows the
IDENTITY stream live, so a change made through any replica ends the sockets of all of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from democratic_ai.contracts.identity_events import (
    AccessTokenRevoked,
    ApiKeyRevoked,
    IdentityEvent,
    SessionRevoked,
    TenantSuspended,
    UserDeactivated,
    UserRoleChanged,
)
from democratic_ai.services.identity import IdentityIndex, Principal, Unauthenticated, expiry_of, recheck

__all__ = ["CredentialWatch", "Ender", "Watched"]

log = logging.getLogger(__name__)

# Events after which a credential of their tenant may no longer hold as it did.
_REVOKING = (ApiKeyRevoked, UserRoleChanged, UserDeactivated, SessionRevoked, AccessTokenRevoked, TenantSuspended)

Ender = Callable[[str], None]
"""Ends a connection, given why; called at most once, inside the index's fold: it must be quick
(schedule the close, do not await it) and must not raise."""


class Watched:
    """One connection's credential, re-checked on every change that may concern it."""

    def __init__(self, watch: CredentialWatch, principal: Principal, end: Ender) -> None:
        self.principal = principal
        self._watch = watch
        self._end = end
        self._timer: asyncio.TimerHandle | None = None
        self.ended = False

    def current(self) -> Principal:
        """The connection's principal if its credential still holds as it did; otherwise
        :class:`Unauthenticated` (the caller refuses the call and ends the connection)."""
        fresh = recheck(self._watch.index, self.principal)
        if fresh is not self.principal:  # recheck hands back the very principal while its permissions hold
            raise Unauthenticated(
                f"this connection's permissions have changed (its role is now {fresh.role!r}, its toolset"
                f" {list(fresh.toolset) or 'every capability'}): connect again"
            )
        return fresh

    def check(self) -> None:
        """End the connection if its credential no longer holds."""
        try:
            self.current()
        except Unauthenticated as exc:
            self.end(exc.message)

    def end(self, reason: str) -> None:
        """Stop watching and end the connection (once)."""
        if self.ended:
            return
        self.ended = True
        self.stop()
        try:
            self._end(reason)
        except Exception:  # runs inside the identity fold: log, never raise into it
            log.exception("ending a connection whose credential no longer holds failed")

    def stop(self) -> None:
        """Stop watching (the connection has closed)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._watch._forget(self)  # noqa: SLF001 - a watched principal leaves its own watch

    def _expire_at(self, expires_at: datetime) -> None:
        delay = max(0.0, (expires_at - datetime.now(UTC)).total_seconds())
        self._timer = asyncio.get_running_loop().call_later(delay, self.end, "the credential has expired")


class CredentialWatch:
    """The credentials of every open long-lived connection of one gateway, by tenant."""

    def __init__(self, index: IdentityIndex) -> None:
        self.index = index
        self._by_tenant: dict[str, set[Watched]] = {}
        index.on_change(self._changed)

    def watch(self, principal: Principal, end: Ender) -> Watched:
        """Watch ``principal``'s credential: ``end`` is called once it no longer holds.
        Call ``stop()`` on the result when the connection closes. Needs a running loop."""
        watched = Watched(self, principal, end)
        self._by_tenant.setdefault(principal.tenant_id, set()).add(watched)
        expires_at = expiry_of(self.index, principal)
        if expires_at is not None:
            watched._expire_at(expires_at)  # noqa: SLF001 - the watch arms the timers of its own entries
        # A change folded between the authentication and now (a WebSocket handshake takes a
        # write) would otherwise go unnoticed until the next call.
        watched.check()
        return watched

    def close(self) -> None:
        """Stop following the index (the gateway is shutting down)."""
        self.index.remove_change_listener(self._changed)
        for watched in [w for group in self._by_tenant.values() for w in group]:
            watched.stop()

    def watching(self, tenant_id: str) -> int:
        """How many connections of ``tenant_id`` are watched."""
        return len(self._by_tenant.get(tenant_id, ()))

    def _changed(self, event: IdentityEvent) -> None:
        if not isinstance(event, _REVOKING):
            return
        for watched in list(self._by_tenant.get(event.tenant_id, ())):
            watched.check()

    def _forget(self, watched: Watched) -> None:
        group = self._by_tenant.get(watched.principal.tenant_id)
        if group is not None:
            group.discard(watched)
            if not group:
                del self._by_tenant[watched.principal.tenant_id]
