"""The spans a projection adds to the traces of the calls whose events it folded.

An event published with a trace context (the ``traceparent`` NATS header: every usage event of
a traced call, the router's record of a request) gets its fold into the trace of its call: one
span per call and batch, ``projection <name>``, a child of the span the event names — for a
usage event, the module's span that made the answer it meters. The events of one call (a usage
event per metric) share one span; its attributes say how many of the call's events and of the
batch's it covers.

The span starts when the runner began to fold the batch and ends when its transaction committed,
so it is recorded only for a batch that committed (a batch applied again after a failure records
the attempt that committed, timed from the first). A call whose event was quarantined gets an
error status naming the sequence.

There is no span of the batch itself: a batch folds many calls' events, and a trace of its own per
batch would say nothing of any call; how long batches take is in the projection metrics
(:mod:`.metrics`).

With tracing off the runner calls nothing here: it asks :func:`tracing_enabled` once per batch.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind, Status, StatusCode

from democratic_ai.contracts import tracing
from democratic_ai.contracts.headers import TRACEPARENT

__all__ = ["record_fold"]


def record_fold(
    projection: str,
    stream: str,
    events: Sequence[Msg],
    started_ns: int,
    ended_ns: int,
    quarantined: Collection[int] = (),
) -> int:
    """Record the fold of ``events`` (committed between ``started_ns`` and ``ended_ns``, wall-clock
    nanoseconds) as a span in each call's trace; ``quarantined`` are the stream sequences of the
    events quarantined. Returns how many spans were recorded."""
    calls: dict[str, list[Msg]] = {}
    for msg in events:
        headers = msg.headers
        traceparent = headers.get(TRACEPARENT) if headers else None
        if traceparent:
            calls.setdefault(traceparent, []).append(msg)
    recorded = 0
    for messages in calls.values():
        parent = tracing.extract(messages[0].headers)
        span = tracing.tracer.start_span(
            f"projection {projection}",
            context=parent,
            kind=SpanKind.CONSUMER,
            start_time=started_ns,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": stream,
                "dai.projection": projection,
                "dai.events": len(messages),
                "dai.batch.events": len(events),
                "dai.stream.sequence": messages[-1].metadata.sequence.stream,
            },
        )
        bad = [m.metadata.sequence.stream for m in messages if m.metadata.sequence.stream in quarantined]
        if bad:
            span.set_status(Status(StatusCode.ERROR, f"quarantined: stream sequence {', '.join(map(str, bad))}"))
        span.end(end_time=ended_ns)
        recorded += 1
    return recorded
