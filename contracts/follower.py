"""Folding a whole stream in memory: replay it from the start, then follow it live.

The gateway's auth index and the registry index are such folds. ``start`` returns once the
fold has caught up with the stream's end as it was at the call, and ``wait_for(seq)`` lets a
command that just appended an event wait until its own fold has applied it.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

__all__ = ["StreamFollower"]


class StreamFollower:
    """Subclasses name their stream and subjects, and implement :meth:`apply_message`."""

    stream: ClassVar[str]
    filter_subject: ClassVar[str]

    def __init__(self) -> None:
        self.last_sequence = 0
        self._progress = asyncio.Condition()
        self._subscription: JetStreamContext.PushSubscription | None = None

    def apply_message(self, msg: Msg) -> None:
        """Fold one message (in stream order). Must not raise for a malformed one: log and skip."""
        raise NotImplementedError

    async def start(self, js: JetStreamContext, timeout: float = 30.0) -> None:
        # The last message the filter selects, not the stream's last: a fold of some subjects
        # would otherwise wait for a message it never receives.
        try:
            target = (await js.get_last_msg(self.stream, self.filter_subject)).seq or 0
        except NotFoundError:
            target = 0
        self._subscription = await js.subscribe(
            self.filter_subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL, cb=self._on_message
        )
        await self.wait_for(target, timeout)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def wait_for(self, sequence: int, timeout: float = 10.0) -> None:
        """Wait until the message at stream ``sequence`` has been applied."""
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self.last_sequence >= sequence), timeout)

    async def _on_message(self, msg: Msg) -> None:
        self.apply_message(msg)
        async with self._progress:
            self.last_sequence = msg.metadata.sequence.stream
            self._progress.notify_all()
