"""The answers to a router's plain calls: one inbox subscription for all of them, several messages each.

nats-py's ``request`` keeps the first message on a request's inbox and drops the rest, but a
plain call may get two: ACCEPTED — the module's word that it holds a call it has not answered
within :data:`~democratic_ai.contracts.presence.ACCEPT_AFTER`, naming its instance — and then
the answer. :class:`Replies` does what ``request`` does (one wildcard subscription, a token per
call, an unguessable inbox) and hands every message to the call it belongs to; a call waits
for its next message, or until :meth:`Pending.interrupt` says the instance running it died.

It runs once or twice per call, so it is kept cheap: a call's token is 64 random bits (more than
``request``'s NUID and two random bytes, which a module that saw one inbox could narrow to tens of
millions of guesses) cut from a pool the kernel fills 256 tokens at a time, instead of a system call
per call; a wait is one timer on the loop, not an ``asyncio.timeout`` context.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError

from democratic_ai.contracts.headers import NATS_STATUS

__all__ = ["Interrupted", "Pending", "Replies"]

_NO_RESPONDERS = "503"
_TOKEN_HEX = 16  # hex digits of a call's token: 64 random bits
_POOL_TOKENS = 256  # tokens drawn from the kernel at once


class Interrupted(Exception):
    """:meth:`Pending.interrupt` was called: the wait for the call's next message was given up."""


class Pending:
    """One call's inbox: its messages in order of arrival."""

    __slots__ = ("_interrupted", "_messages", "_replies", "_token", "_waiter", "inbox")

    def __init__(self, replies: Replies, token: str, inbox: str) -> None:
        self._replies = replies
        self._token = token
        self.inbox = inbox
        self._messages: deque[Msg] = deque()
        self._waiter: asyncio.Future[Msg | None] | None = None
        self._interrupted = False

    def deliver(self, msg: Msg) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)
        else:
            self._messages.append(msg)

    def interrupt(self) -> None:
        """Stop waiting: :meth:`next` raises :class:`Interrupted` once the messages already in are taken."""
        self._interrupted = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, timeout: float) -> Msg:
        """The next message; raises ``TimeoutError`` after ``timeout`` seconds, ``NoRespondersError``
        when NATS says nobody took the call, :class:`Interrupted` when interrupted."""
        if self._messages:
            msg: Msg | None = self._messages.popleft()
        elif self._interrupted:
            raise Interrupted
        else:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(max(timeout, 0.0), _expire, waiter)
            try:
                msg = await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if msg is None:
                raise Interrupted
        if not msg.data and msg.headers and msg.headers.get(NATS_STATUS) == _NO_RESPONDERS:
            raise NoRespondersError
        return msg

    def close(self) -> None:
        """The call is over: messages that still come for it are dropped."""
        self._replies._pending.pop(self._token, None)  # noqa: SLF001 - Replies keeps the map its Pendings leave


class Replies:
    """Inboxes for the plain calls made on one connection."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._pending: dict[str, Pending] = {}
        self._prefix = ""
        self._opening: asyncio.Future[Subscription] | None = None
        self._pool = ""  # random hex digits, a token's worth taken per call
        self._drawn = 0  # digits of the pool used

    async def expect(self) -> Pending:
        """A new inbox, subscribed before it is returned: publish the call with it as reply subject."""
        if not self._prefix:
            await self._open()
        return self.pending()

    def pending(self) -> Pending:
        """A new inbox, once the subscription is open (:attr:`ready`); :meth:`expect` opens it first."""
        token = self._token()
        while token in self._pending:  # 64 random bits: practically never, but a token is unique
            token = self._token()
        pending = self._pending[token] = Pending(self, token, self._prefix + token)
        return pending

    @property
    def ready(self) -> bool:
        """Whether the inbox subscription is open, so :meth:`pending` may be used without :meth:`expect`."""
        return bool(self._prefix)

    def _token(self) -> str:
        """64 fresh random bits as hex: unguessable, so nobody can answer a call not sent to them."""
        start = self._drawn
        if start >= len(self._pool):
            self._pool = os.urandom(_POOL_TOKENS * _TOKEN_HEX // 2).hex()
            start = 0
        self._drawn = start + _TOKEN_HEX
        return self._pool[start : start + _TOKEN_HEX]

    async def _open(self) -> None:
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._subscribe(self._nc.new_inbox() + "."))
        try:
            await asyncio.shield(self._opening)
        except Exception:
            self._opening = None  # the next call tries again
            raise

    async def _subscribe(self, prefix: str) -> Subscription:
        subscription = await self._nc.subscribe(prefix + "*", cb=self._on_reply)
        self._prefix = prefix
        return subscription

    async def _on_reply(self, msg: Msg) -> None:
        pending = self._pending.get(msg.subject[len(self._prefix) :])
        if pending is not None:
            pending.deliver(msg)


def _expire(waiter: asyncio.Future[Msg | None]) -> None:
    """The timer of :meth:`Pending.next`: the wait is over unless a message came first."""
    if not waiter.done():
        waiter.set_exception(TimeoutError())
