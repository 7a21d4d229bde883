"""One call is one trace: gateway → router → module, the context carried in NATS headers.

This test installs the process-wide tracer provider, so it runs in a child process of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import asyncpg

from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.schemas import app_dsn

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import aiohttp, nats
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry import trace
    from pathlib import Path
    from democratic_ai.contracts import ensure_streams, tracing
    from democratic_ai.contracts.bus import BusOptions, connect
    from democratic_ai.hub import Hub
    from democratic_ai.ops.ports import free_port
    from democratic_ai.sdk.examples import TextTools
    from democratic_ai.services.gateway import GatewayConfig, create_app
    from democratic_ai.services.identity import ensure_bootstrap
    from aiohttp import web

    async def main(nats_url, database_url):
        exporter = InMemorySpanExporter()
        tracing.configure_tracing("test", exporter)
        nc = await connect(BusOptions.from_env(nats_url), "test")
        js = nc.jetstream()
        await ensure_streams(js)
        hub = Hub(); await hub.start(nc)
        module = TextTools(); await module.start(nc)
        key = await ensure_bootstrap(js)
        port = free_port()
        runner = web.AppRunner(create_app(GatewayConfig(
            bus=BusOptions.from_env(nats_url, Path(sys.argv[3])), database_url=database_url, port=port)))
        await runner.setup(); await web.TCPSite(runner, "127.0.0.1", port).start()
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/v1/capabilities/text.analyze/invoke",
                                    data=b'{"text": "Trace me."}',
                                    headers={"X-API-Key": key, "Content-Type": "application/json"}) as r:
                assert r.status == 200, await r.text()
        await module.stop(); await hub.stop(); await runner.cleanup(); await nc.close()
        trace.get_tracer_provider().force_flush()
        for span in exporter.get_finished_spans():
            parent = span.parent.span_id if span.parent else 0
            print(span.name, span.context.trace_id, span.context.span_id, parent)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_one_call_is_one_trace(nats_server: NatsServer, database_url: str, pool: asyncpg.Pool) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            nats_server.url,
            app_dsn(database_url),
            str(nats_server.credentials.file("gateway")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **nats_server.environment("operator")},
    )
    assert result.returncode == 0, result.stderr
    spans = {
        name: (int(trace_id), int(span_id), int(parent))
        for *words, trace_id, span_id, parent in (line.rsplit(" ", 3) for line in result.stdout.splitlines())
        for name in [" ".join(words)]
    }
    gateway, router, module = (
        spans["gateway invoke text.analyze"],
        spans["hub route text.analyze"],
        spans["module text.analyze"],
    )
    assert gateway[0] == router[0] == module[0]
    assert router[2] == gateway[1]  # the router's span is a child of the gateway's
    assert module[2] == router[1]  # and the module's, across NATS, a child of the router's
