"""One call is one trace across three processes: `dai gateway` → `dai module run` → `dai projections run usage`.

Each process runs in the environment the README's Tracing section sets, and exports its spans
over OTLP/HTTP to a receiver in this test (support/otlp.py) standing in for the collector. One
HTTP call, plain and then streamed (Server-Sent Events), and for each: spans of three services,
one trace id, and each process's span a child of the previous process's — the gateway's call span
and its router span, the module's span under the router's, and the usage projection's fold of
the call's usage events under the module's span (the usage events continue from the span that
made the answer).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import aiohttp
import asyncpg
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts import subjects
from democratic_ai.contracts.headers import HTTP_CALL_ID
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import free_port
from democratic_ai.projections import PROJECTIONS
from democratic_ai.projections.recovery import CHECKPOINT as RECOVERY_CHECKPOINT
from democratic_ai.schemas import app_dsn

from support.gateway import gateway_ready, issue_key
from support.modules import Echo
from support.names import unique
from support.otlp import OtlpReceiver, ReceivedSpan, otlp_receiver
from support.paths import REPO, TESTS
from support.readme import run_script, section_scripts
from support.waiting import eventually

GATEWAY, MODULE, PROJECTIONS_SERVICE = "dai-gateway", f"dai-module-{Echo.module_id}", "dai-projections"
USAGE_EVENTS_PER_CALL = 4  # api_calls, compute_ms, bytes_in, bytes_out


async def readme_tracing() -> dict[str, str]:
    """The variables the README's Tracing section exports, as its shell block leaves them."""
    [block] = section_scripts(REPO / "README.md", "## Tracing")
    out, _ = await run_script(f"{block}\nenv -0\n", cwd=REPO, env={"PATH": os.environ["PATH"]})
    exported = dict(line.split("=", 1) for line in out.split("\0") if line)
    return {name: value for name, value in exported.items() if name == "DAI_TRACING" or name.startswith("OTEL_")}


def traced(readme: dict[str, str], receiver: OtlpReceiver) -> dict[str, str]:
    """The README's environment, sending the spans to ``receiver`` at once instead of to its collector."""
    assert readme["DAI_TRACING"] == "otlp" and readme["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://")
    env = {name: value for name, value in os.environ.items() if not name.startswith(("DAI_BUS_", "OTEL_"))}
    env.update(
        readme,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_BSP_SCHEDULE_DELAY="50",  # milliseconds: each span is exported right after it ends
        DAI_LOG_LEVEL="WARNING",
    )
    return env


@asynccontextmanager
async def dai(*argv: str, env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """``dai ARGV`` as a process of its own, stopped with SIGTERM (as a supervisor would) at the end."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "democratic_ai.ops.cli", *argv, env=env)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


@contextmanager
def alive(*processes: asyncio.subprocess.Process) -> Iterator[None]:
    yield
    assert all(p.returncode is None for p in processes), "a platform process exited"


async def start_at_stream_ends(nc: NATS, pool: asyncpg.Pool) -> None:
    """The usage projection (and its recovery sweep) start at their streams' ends, as the
    ``projections`` fixture does: the session's earlier calls are not this test's."""
    js = nc.jetstream()
    usage_end = (await js.stream_info(PROJECTIONS["usage"].stream)).state.last_seq
    mcp_end = (await js.stream_info(PROJECTIONS["calls"].stream)).state.last_seq
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO projection_checkpoints (name, last_sequence) VALUES ($1, $2)",
            [("usage", usage_end), (RECOVERY_CHECKPOINT, mcp_end)],
        )


async def module_serving(nc: NATS) -> None:
    """Wait for the module's heartbeat (one a second): it sends them once its subscriptions are in place."""
    subscription = await nc.subscribe(subjects.heartbeat(Echo.module_id))
    try:
        await subscription.next_msg(timeout=30)
    finally:
        await subscription.unsubscribe()


async def call(url: str, key: str, accept: str = "application/json") -> str:
    """One call of ``test.echo`` (streamed as Server-Sent Events when ``accept`` says so); its call id."""
    headers = {"X-API-Key": key, "Accept": accept}
    async with aiohttp.ClientSession() as session, session.post(url, json={"text": "trace me"}, headers=headers) as r:
        body = await r.text()
        assert r.status == 200 and r.content_type == accept, (r.status, body)
        return r.headers[HTTP_CALL_ID]


async def traced_to_the_fold(receiver: OtlpReceiver, call_id: str) -> list[ReceivedSpan]:
    """The spans of the trace of call ``call_id``, once its usage projection's spans cover its four events."""

    def call_span() -> ReceivedSpan | None:  # found by the call id, as an operator would
        return next((s for s in receiver.spans if s.attributes.get("dai.call_id") == call_id), None)

    root = await eventually(call_span, f"the gateway's span of call {call_id}", timeout=15)

    def folded() -> int:
        return sum(
            int(s.attributes["dai.events"]) for s in receiver.of(root.trace_id) if s.service == PROJECTIONS_SERVICE
        )

    await eventually(
        lambda: folded() >= USAGE_EVENTS_PER_CALL,
        lambda: f"the fold of call {call_id}'s usage in its trace; received {receiver.spans}",
        timeout=30,
    )
    return receiver.of(root.trace_id)


def one(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.name == name]
    assert len(found) == 1, (service, name, spans)
    return found[0]


@pytest.mark.slow
async def test_a_call_is_one_trace_across_gateway_module_and_usage_projection_plain_or_streamed(
    nats_server: NatsServer, database_url: str, pool: asyncpg.Pool, nc: NATS
) -> None:
    await start_at_stream_ends(nc, pool)
    tenant = unique("tenant")
    key = await issue_key(nc, tenant)
    port = free_port()
    readme = await readme_tracing()
    async with otlp_receiver() as receiver:
        env = traced(readme, receiver)
        async with (
            dai(
                "projections",
                "run",
                "usage",
                env={**env, **nats_server.environment("projections"), "DATABASE_URL": database_url},
            ) as projections,
            dai(  # as the operator: a role credential serves a module without registering it first
                "module",
                "run",
                "support.modules:Echo",
                env={
                    **env,
                    **nats_server.environment("operator"),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")])),
                },
            ) as module,
            dai(
                "gateway",
                "--port",
                str(port),
                env={
                    **env,
                    **nats_server.environment("gateway"),
                    "DATABASE_APP_URL": app_dsn(database_url),
                    "DAI_USAGE_FLUSH_SECONDS": "0.05",
                },
            ) as gateway,
        ):
            with alive(projections, module, gateway):
                url = f"http://127.0.0.1:{port}"
                await gateway_ready(url, key)
                await module_serving(nc)
                plain = await call(f"{url}/v1/capabilities/test.echo/invoke", key)
                streamed = await call(f"{url}/v1/capabilities/test.echo/invoke", key, accept="text/event-stream")
                traces = [await traced_to_the_fold(receiver, call_id) for call_id in (plain, streamed)]
        assert not receiver.refused

    for spans, (call_span, router_span, module_span) in zip(
        traces,
        [
            ("gateway invoke test.echo", "hub route test.echo", "module test.echo"),
            ("gateway stream test.echo", "hub stream test.echo", "module stream test.echo"),
        ],
        strict=True,
    ):
        assert {s.service for s in spans} == {GATEWAY, MODULE, PROJECTIONS_SERVICE}
        # The README's resource attributes are on every process's spans.
        attributes = dict(pair.split("=", 1) for pair in readme["OTEL_RESOURCE_ATTRIBUTES"].split(","))
        assert attributes and all(attributes.items() <= s.resource.items() for s in spans)
        root = one(spans, GATEWAY, call_span)
        assert root.parent_span_id == ""  # the call begins the trace
        router = one(spans, GATEWAY, router_span)
        handler = one(spans, MODULE, module_span)
        folds = [s for s in spans if s.service == PROJECTIONS_SERVICE]
        assert router.parent_span_id == root.span_id  # the router's span, in the gateway, under the call's
        assert handler.parent_span_id == router.span_id  # across NATS: the module's under the router's
        # The usage events continue from the span that made the answer: the module's. Normally one
        # fold span; two if the call's four events fell into two batches.
        assert folds and all(s.name == "projection usage" and s.parent_span_id == handler.span_id for s in folds)
        assert sum(int(s.attributes["dai.events"]) for s in folds) == USAGE_EVENTS_PER_CALL
        assert {s.attributes["messaging.destination.name"] for s in folds} == {"USAGE"}
    assert {s.attributes["messaging.destination.name"] for s in folds} == {"USAGE"}
