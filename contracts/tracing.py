"""OpenTelemetry for one call across processes: gateway → router → module → usage projection is one trace.

The trace context travels in NATS headers (W3C ``traceparent``): from the gateway's router to
the module with the call; from the module back to the gateway inside its answer (the MCP header
``traceparent`` names the module's span, :func:`inject` into ``answer.headers``); and from the
gateway to the projections with each usage event of the call, whose parent is the span that made
the answer (:func:`derived_context`). Each process names itself (``service.name``) when it calls
:func:`configure_tracing`: ``dai-gateway``, ``dai-hub``, ``dai-module-<module id>``,
``dai-projections``.

Tracing is off unless ``DAI_TRACING`` is ``console`` or ``otlp`` (the OTLP/HTTP exporter reads the
standard ``OTEL_EXPORTER_OTLP_*`` variables, the batching span processor ``OTEL_BSP_*``, and the
resource takes ``OTEL_RESOURCE_ATTRIBUTES``); when off, the hot path skips it entirely.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, MutableMapping
from typing import TypeVar

from opentelemetry import context as otel_context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from .headers import TRACEPARENT

__all__ = [
    "configure_tracing",
    "derived_context",
    "extract",
    "in_context_of_now",
    "inject",
    "tracer",
    "tracing_enabled",
]

_enabled = False
_Headers = TypeVar("_Headers", bound=MutableMapping[str, str])
_T = TypeVar("_T")
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


def inject(headers: _Headers) -> _Headers:
    """Add the current trace context to ``headers`` (NATS headers, or an answer's MCP headers) and
    return them; nothing is added when no span is current."""
    propagate.inject(headers)
    return headers


# version 00, a trace id, a parent span id, flags (W3C Trace Context)
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def derived_context(made_by: str | None) -> dict[str, str] | None:
    """The trace headers of what a call's last answer gives rise to (its usage events).

    Their parent is the span that made the answer — ``made_by``, the answer's ``traceparent``
    MCP header, which the module set — when that span belongs to the trace current here (the
    call's); otherwise the current span. A module's answer so cannot hang the call's usage on
    another trace. ``None`` when no span is current.
    """
    current = trace.get_current_span().get_span_context()
    if not current.is_valid:
        return None
    if made_by is not None:
        named = _TRACEPARENT.fullmatch(made_by)
        if named is not None and int(named.group(1), 16) == current.trace_id:
            return {TRACEPARENT: made_by}
    return inject({})


def extract(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The trace context carried by ``headers`` (an empty context when there is none)."""
    return propagate.extract(headers or {})


def in_context_of_now(function: Callable[[_T], None]) -> Callable[[_T], None]:
    """``function``, run in the trace context current now whenever it is called later.

    A streamed call ends in whichever task reads its stream, after the gateway's span of the call
    has ended; its end is metered in the call's context all the same, so that its usage events
    continue the call's trace (:func:`derived_context`)."""
    saved = otel_context.get_current()

    def run(argument: _T) -> None:
        token = otel_context.attach(saved)
        try:
            function(argument)
        finally:
            otel_context.detach(token)

    return run
