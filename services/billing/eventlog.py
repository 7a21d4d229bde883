"""Reading one aggregate's events from the BILLING stream, and appending with optimistic concurrency.

A billing command loads its aggregate straight from the log — a subscription is a handful of
events on one subject — instead of trusting a read model that may lag: the decision and the
``Nats-Expected-Last-Subject-Sequence`` it appends with come from the same read.
"""

from __future__ import annotations

import logging

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from democratic_ai.contracts.billing_events import BillingEvent, decode_event, encode_event
from democratic_ai.contracts.eventlog import AppendConflict, append
from democratic_ai.contracts.fields import EventRejected
from democratic_ai.contracts.streams import BILLING_STREAM

from .errors import Conflict, Invalid

__all__ = ["STREAM", "BillingLog"]

log = logging.getLogger(__name__)

STREAM = BILLING_STREAM


class BillingLog:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def read(self, subject: str) -> list[tuple[int, BillingEvent]]:
        """Every event on ``subject``, in stream order, with its sequence."""
        events: list[tuple[int, BillingEvent]] = []
        sequence = 1
        while True:
            try:
                msg = await self.js.get_msg(STREAM, sequence, subject=subject, next=True)
            except NotFoundError:
                return events
            if msg.seq is None or msg.data is None:
                return events
            try:
                events.append((msg.seq, decode_event(msg.data)))
            except msgspec.DecodeError as exc:
                log.error("skipped unreadable BILLING event %d on %s: %s", msg.seq, subject, exc)
            sequence = msg.seq + 1

    async def append(
        self, subject: str, event: BillingEvent, *, expected: int | None, msg_id: str | None = None
    ) -> int:
        """Append ``event``; raises :class:`Conflict` when ``subject`` has moved past ``expected``,
        :class:`Invalid` (naming the field) when the event breaks a limit of its type.

        With ``msg_id``, a retried append within the duplicate window is dropped by JetStream
        and answers the first one's sequence (one that repeats ``expected`` after the first
        landed is a :class:`Conflict`: :func:`~democratic_ai.contracts.eventlog.append`).
        """
        try:
            data = encode_event(event)
        except EventRejected as exc:
            raise Invalid(f"{exc.field}: {exc.message}", field=exc.field) from None
        try:
            return await append(self.js, subject, data, expected=expected, msg_id=msg_id)
        except AppendConflict:
            raise Conflict("a concurrent change won; read the current state and retry") from None
