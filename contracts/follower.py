"""Folding a whole stream in memory: replay it from the start, then follow it live.

The gateway's auth index and the registry index are such folds. ``start`` returns once the
fold has caught up with the stream as it was at the call, ``wait_for(seq)`` lets a command
that just appended an event wait until its own fold has applied it, and ``catch_up()`` waits
for what other processes appended up to now. The fold survives
reconnects and server restarts: it resumes after the last sequence it applied
(:class:`~.ordered.OrderedConsumer`).
"""

from __future__ import annotations

from typing import ClassVar

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from .ordered import OrderedConsumer

__all__ = ["StreamFollower"]


class StreamFollower:
    """Subclasses name their stream and subjects, and implement :meth:`apply_message`."""

    stream: ClassVar[str]
    filter_subject: ClassVar[str]

    def __init__(self) -> None:
        self._consumer: OrderedConsumer | None = None

    @property
    def last_sequence(self) -> int:
        """The last stream sequence this fold has applied."""
        return 0 if self._consumer is None else self._consumer.last_sequence

    @property
    def resumes(self) -> int:
        """How often the fold had to resume (after reconnects, restarts, lost messages)."""
        return 0 if self._consumer is None else self._consumer.resumes

    def apply_message(self, msg: Msg) -> None:
        """Fold one message (in stream order). Must not raise for a malformed one: log and skip."""
        raise NotImplementedError

    async def start(self, js: JetStreamContext, timeout: float = 30.0) -> None:
        self._consumer = OrderedConsumer(
            js, self.stream, self.filter_subject, self._on_message, start=DeliverPolicy.ALL
        )
        await self._consumer.start(timeout)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def wait_for(self, sequence: int, timeout: float = 10.0) -> None:
        """Wait until the message at stream ``sequence`` has been applied."""
        if self._consumer is None:
            raise RuntimeError(f"the {self.stream} follower is not started")
        await self._consumer.wait_for(sequence, timeout)

    async def catch_up(self, timeout: float = 1.0) -> None:
        """Wait until the fold has applied everything the stream holds now: read-your-writes for
        what another process appended (a command's own append uses :meth:`wait_for`). Raises
        ``TimeoutError``."""
        if self._consumer is None:
            raise RuntimeError(f"the {self.stream} follower is not started")
        await self._consumer.catch_up(timeout)

    async def _on_message(self, msg: Msg) -> None:
        self.apply_message(msg)
