"""OpenTelemetry for one call across processes: gateway → router → module is one trace.

The trace context travels in NATS headers (W3C ``traceparent``). Tracing is off unless
``DAI_TRACING`` is ``console`` or ``otlp`` (the OTLP/HTTP exporter reads the standard
``OTEL_EXPORTER_OTLP_*`` variables); when off, the hot path skips it entirely.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import context as otel_context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

__all__ = ["configure_tracing", "extract", "inject", "tracer", "tracing_enabled"]

_enabled = False
tracer = trace.get_tracer("democratic_ai")


def configure_tracing(service_name: str, exporter: str | SpanExporter | None = None) -> None:
    """Install a tracer provider exporting to ``exporter`` (default: ``$DAI_TRACING``).

    ``exporter`` is ``"console"``, ``"otlp"``, ``"off"``, or a ``SpanExporter`` instance.
    """
    if isinstance(exporter, SpanExporter):
        _install(service_name, exporter)
        return
    choice = (exporter if exporter is not None else os.environ.get("DAI_TRACING", "")).strip().lower()
    if choice in ("", "off", "none"):
        return
    span_exporter: SpanExporter
    if choice == "console":
        span_exporter = ConsoleSpanExporter()
    elif choice == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    else:
        raise ValueError(f"DAI_TRACING must be 'console', 'otlp' or 'off', not {choice!r}.")
    _install(service_name, span_exporter)


def _install(service_name: str, exporter: SpanExporter) -> None:
    global _enabled
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _enabled = True


def tracing_enabled() -> bool:
    return _enabled


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context to ``headers`` and return them."""
    propagate.inject(headers)
    return headers


def extract(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The trace context carried by ``headers`` (an empty context when there is none)."""
    return propagate.extract(headers or {})
