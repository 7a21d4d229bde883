"""An OTLP/HTTP trace receiver: what a collector is to the platform's processes, in the test's loop.

It accepts ``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest`` (the body the
OpenTelemetry OTLP/HTTP exporter sends; gzip is undone by aiohttp) and keeps every span with the
``service.name`` of the resource that sent it. Point a process at it with
``OTEL_EXPORTER_OTLP_ENDPOINT=<receiver.url>`` (the exporter adds ``/v1/traces``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from democratic_ai.ops.ports import free_port

__all__ = ["OtlpReceiver", "ReceivedSpan", "otlp_receiver"]

PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    service: str  # the service.name of the resource that exported it
    resource: dict[str, str]  # every (string) attribute of that resource
    name: str
    trace_id: str  # hex, as trace viewers show them
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict[str, object]


class OtlpReceiver:
    """The spans received so far (``spans``), and requests it refused (``refused``: their reasons)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.spans: list[ReceivedSpan] = []
        self.refused: list[str] = []

    def of(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]

    async def handle(self, request: web.Request) -> web.Response:
        if request.content_type != PROTOBUF:
            self.refused.append(f"content type {request.content_type}")
            return web.Response(status=415)
        export = ExportTraceServiceRequest()
        try:
            export.ParseFromString(await request.read())
        except DecodeError as exc:
            self.refused.append(f"undecodable body: {exc}")
            return web.Response(status=400)
        for resource_spans in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            service = attributes.get("service.name", "")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service=service,
                            resource=attributes,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF)


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@asynccontextmanager
async def otlp_receiver() -> AsyncIterator[OtlpReceiver]:
    """A receiver listening on a free port of 127.0.0.1 for as long as the block runs."""
    receiver = OtlpReceiver(free_port())
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", receiver.port).start()
    try:
        yield receiver
    finally:
        await runner.cleanup()
