"""What a call's usage events continue from (tracing.derived_context): the span that made the
answer when it is of the call's trace, else the current span — never another trace."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from democratic_ai.contracts import tracing
from democratic_ai.contracts.headers import TRACEPARENT

CALL_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
ROUTER_SPAN = 0x00F067AA0BA902B7


@contextmanager
def current(trace_id: int = CALL_TRACE, span_id: int = ROUTER_SPAN) -> Iterator[None]:
    """A span of the given ids current, as the router's is when the gateway meters a call."""
    span = NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1)))
    with trace.use_span(span):
        yield


def traceparent(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def test_the_span_that_made_the_answer_is_the_parent_when_it_is_of_the_calls_trace() -> None:
    module_span = traceparent(CALL_TRACE, 0x1234)
    with current():
        assert tracing.derived_context(module_span) == {TRACEPARENT: module_span}


def test_an_answer_naming_another_trace_or_none_or_garbage_gets_the_current_span() -> None:
    router = {TRACEPARENT: traceparent(CALL_TRACE, ROUTER_SPAN)}
    with current():
        for made_by in (traceparent(CALL_TRACE + 1, 0x1234), None, "", "00-xyz", traceparent(CALL_TRACE, 1) + "-x"):
            assert tracing.derived_context(made_by) == router, made_by


def test_nothing_without_a_current_span() -> None:
    assert tracing.derived_context(traceparent(CALL_TRACE, 0x1234)) is None


def test_a_function_bound_in_a_span_runs_in_it_later_and_leaves_the_context_as_it_was() -> None:
    seen: list[int] = []

    def end(answer: object) -> None:
        seen.append(trace.get_current_span().get_span_context().span_id)

    with current(span_id=0xCA11):
        bound = tracing.in_context_of_now(end)
    bound(object())  # later, in a task with no span of the call
    assert seen == [0xCA11]
    assert not trace.get_current_span().get_span_context().is_valid
