"""The usage projection continues the traces of the calls it folds: one span per call and batch,
under the span the call's events name, with an error status when one of them was quarantined.

The test installs the process-wide tracer provider, so the fold runs in a child process of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime

import asyncpg
from nats.aio.client import Client as NATS

from democratic_ai.contracts.headers import NATS_MSG_ID, TRACEPARENT
from democratic_ai.contracts.subjects import usage_subject
from democratic_ai.contracts.usage_events import CallMetered, encode_event, message_id
from democratic_ai.ops.nats_server import NatsServer

from support.names import unique

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import asyncpg
    from nats.js.api import ConsumerConfig, DeliverPolicy
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from democratic_ai.contracts import tracing
    from democratic_ai.contracts.bus import BusOptions, connect
    from democratic_ai.projections import PROJECTIONS, ProjectionRunner

    async def main(tenant, database_url):
        exporter = InMemorySpanExporter()
        tracing.configure_tracing("test", exporter)
        nc = await connect(BusOptions.from_env(), "test")
        subscription = await nc.jetstream().pull_subscribe(
            f"usage.{tenant}.>", stream="USAGE",
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy="none"))
        batch = await subscription.fetch(5, timeout=5)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
        runner = ProjectionRunner(nc.jetstream(), pool, PROJECTIONS["usage"])
        await runner.apply(batch)
        await pool.close(); await nc.close()
        trace.get_tracer_provider().force_flush()
        for span in exporter.get_finished_spans():
            print(json.dumps({
                "name": span.name, "trace_id": f"{span.context.trace_id:032x}",
                "parent": f"{span.parent.span_id:016x}" if span.parent else "",
                "attributes": dict(span.attributes), "status": span.status.status_code.name,
                "description": span.status.description,
            }))
        print(json.dumps({"quarantined": runner.quarantined, "applied": runner.applied}))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def traceparent(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


async def test_a_fold_is_a_span_in_each_calls_trace_and_a_quarantined_event_marks_its_call(
    nats_server: NatsServer, nc: NATS, database_url: str, pool: asyncpg.Pool
) -> None:
    tenant, at = unique("tenant"), datetime.now(UTC)
    good = {TRACEPARENT: traceparent(0xA1, 0xA2)}
    spoiled = {TRACEPARENT: traceparent(0xB1, 0xB2)}

    def event(call: str, metric: str) -> CallMetered:
        return CallMetered(tenant_id=tenant, metric=metric, value=1, at=at, call_id=call, capability="test.echo")

    js = nc.jetstream()
    published = [
        (event("good", "api_calls"), good),
        (event("good", "bytes_in"), good),
        (event("spoiled", "api_calls"), spoiled),
        (event("untraced", "api_calls"), {}),
    ]
    for usage, trace in published:
        await js.publish(
            usage_subject(tenant, usage.metric), encode_event(usage), headers={**trace, NATS_MSG_ID: message_id(usage)}
        )
    # The spoiled call's second event is not a usage event at all: the projection quarantines it.
    poison = await js.publish(usage_subject(tenant, "bytes_in"), b'{"type": "usage.call"}', headers=spoiled)

    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, tenant, database_url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **nats_server.environment("operator")},
    )
    assert result.returncode == 0, result.stderr
    *spans, counts = [json.loads(line) for line in result.stdout.splitlines()]
    assert counts == {"quarantined": 1, "applied": 4}
    by_trace = {span["trace_id"]: span for span in spans}
    assert len(spans) == 2 and set(by_trace) == {f"{0xA1:032x}", f"{0xB1:032x}"}  # the untraced call has none
    folded, marked = by_trace[f"{0xA1:032x}"], by_trace[f"{0xB1:032x}"]
    assert (folded["name"], folded["parent"], folded["status"]) == ("projection usage", f"{0xA2:016x}", "UNSET")
    assert (marked["parent"], marked["status"]) == (f"{0xB2:016x}", "ERROR")
    assert marked["description"] == f"quarantined: stream sequence {poison.seq}"
    assert folded["attributes"]["dai.events"] == marked["attributes"]["dai.events"] == 2
    assert folded["attributes"]["dai.batch.events"] == 5
    assert folded["attributes"]["dai.projection"] == "usage"
