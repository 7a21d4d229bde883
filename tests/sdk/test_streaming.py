"""Streaming over NATS: chunks in order with progress, recorded in the log; cancel reaches the handler."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from democratic_ai.contracts import MessageType, decode, new_request, streaming, subjects
from democratic_ai.contracts.headers import MCP_COMPUTE_MS
from democratic_ai.hub import Router
from democratic_ai.sdk import CallError, Chunk, Client

from support.names import unique
from support.streamer import Streamer
from support.waiting import eventually


@pytest.fixture
async def streamer(nc: NATS) -> AsyncIterator[Streamer]:
    module = Streamer()
    await module.start(nc)
    yield module
    await module.stop(grace=1.0)


async def _records(nc: NATS, subject: str, expected: int) -> list:
    subscription = await nc.jetstream().pull_subscribe(
        subject, stream="MCP", config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy="none")
    )
    messages = await subscription.fetch(expected, timeout=2)
    return [(m.subject, decode(m.data)) for m in messages]


async def test_chunks_arrive_in_order_with_progress_and_are_recorded(nc: NATS, streamer: Streamer) -> None:
    tenant = unique("tenant")
    chunks = [chunk async for chunk in Client(nc, tenant=tenant).stream("test.count", {"n": 4})]
    assert chunks == [Chunk({"i": i}, (i + 1) / 4, f"{i + 1} of 4") for i in range(4)]

    records = await _records(nc, f"mcp.*.{tenant}.test.count", 6)
    request = [m for s, m in records if s.startswith("mcp.req.")]
    answers = [m for s, m in records if s.startswith("mcp.res.")]
    assert len(request) == 1 and request[0].type == MessageType.REQUEST
    assert [m.type for m in answers] == [MessageType.STREAM_CHUNK] * 5
    assert [m.sequence for m in answers] == [0, 1, 2, 3, 4]
    assert [m.final for m in answers] == [False] * 4 + [True]
    assert {m.correlation_id for m in answers} == {request[0].correlation_id}
    assert answers[1].progress.fraction == 0.5 and answers[1].progress.message == "2 of 4"
    assert float(answers[-1].headers[MCP_COMPUTE_MS]) >= 0


async def test_a_plain_call_of_a_streaming_capability_gets_its_last_data(nc: NATS, streamer: Streamer) -> None:
    assert await Client(nc).call("test.count", {"n": 5}) == {"i": 4}


async def test_a_capability_that_does_not_stream_streams_as_one_chunk(nc: NATS, streamer: Streamer) -> None:
    assert [c async for c in Client(nc).stream("test.once", {"text": "hi"})] == [Chunk({"echo": "hi"})]


async def test_streaming_no_module_is_refused_at_once(nc: NATS) -> None:
    started = time.monotonic()
    with pytest.raises(CallError) as caught:
        async for _ in Client(nc).stream("test.nobody-serves-this"):
            pass
    assert caught.value.code == "CAPABILITY_UNAVAILABLE"
    assert time.monotonic() - started < 0.3


@pytest.mark.parametrize(
    ("how", "code"), [("raise", "MODULE_ERROR"), ("schema", "VALIDATION_FAILED"), ("call_error", "RATE_LIMITED")]
)
async def test_a_failure_mid_stream_ends_it_with_an_error(nc: NATS, streamer: Streamer, how: str, code: str) -> None:
    received = []
    with pytest.raises(CallError) as caught:  # noqa: PT012 - iterating the stream is what raises
        async for chunk in Client(nc).stream("test.broken", {"fail_after": 2, "how": how}):
            received.append(chunk.data)
    assert received == [{"i": 0}, {"i": 1}]  # output is checked per chunk: good ones pass
    assert caught.value.code == code
    if how == "schema":
        assert caught.value.details["where"] == "output" and caught.value.details["path"] == "$.i"


async def test_bad_input_to_a_stream_is_validation_failed(nc: NATS, streamer: Streamer) -> None:
    with pytest.raises(CallError) as caught:
        async for _ in Client(nc).stream("test.count", {"n": 2, "unknown": 1}):
            pass
    assert caught.value.code == "VALIDATION_FAILED" and caught.value.details["path"] == "$.unknown"


async def test_leaving_the_loop_cancels_the_handler_within_100_ms(nc: NATS, streamer: Streamer) -> None:
    tenant = unique("tenant")
    stream = Client(nc, tenant=tenant).stream("test.hang")
    async for chunk in stream:
        assert chunk.data == {"i": 0}
        break
    await streamer.started.wait()
    left = time.monotonic()
    await stream.aclose()
    await eventually(lambda: streamer.cancelled_at, "the handler to be cancelled", timeout=0.5, interval=0.005)
    assert streamer.cancelled_at[0] - left < 0.1

    # The log holds the caller's CANCEL and the module's CANCELLED error with the compute time.
    records = await _records(nc, f"mcp.*.{tenant}.test.hang", 4)
    cancel = [m for s, m in records if s.startswith("mcp.req.") and m.type == MessageType.CANCEL]
    errors = [m for s, m in records if s.startswith("mcp.res.") and m.type == MessageType.ERROR]
    assert len(cancel) == 1 and len(errors) == 1
    assert errors[0].error.code == "CANCELLED"
    assert 0 <= float(errors[0].headers[MCP_COMPUTE_MS]) < 5_000


async def test_a_stream_a_stopping_module_cuts_short_ends_unavailable_not_cancelled(nc: NATS) -> None:
    """No caller asked to stop it, so the end is not the caller's CANCELLED (whose compute is billed)."""
    module = Streamer()
    await module.start(nc)
    tenant = unique("tenant")
    stream = Client(nc, tenant=tenant).stream("test.hang")
    try:
        assert (await anext(stream)).data == {"i": 0}
        await module.started.wait()
        await module.stop(grace=0.1)
        with pytest.raises(CallError) as caught:
            await anext(stream)
        assert caught.value.code == "MODULE_UNAVAILABLE"
    finally:
        await stream.aclose()
        await module.stop(grace=0.1)
    records = await _records(nc, f"mcp.res.{tenant}.test.hang", 2)
    errors = [m for _, m in records if m.type == MessageType.ERROR]
    assert [e.error.code for e in errors] == ["MODULE_UNAVAILABLE"]
    assert float(errors[0].headers[MCP_COMPUTE_MS]) >= 0


async def test_a_cancel_from_another_tenant_is_ignored(nc: NATS, streamer: Streamer) -> None:
    router = Router(nc, source_id="test")
    call = await router.open_stream(new_request("test.hang", b"{}", tenant_id=unique("tenant"), source_module_id="t"))
    first = await anext(call)
    assert first.type == MessageType.STREAM_CHUNK
    intruder = new_request("test.hang", b"{}", tenant_id=unique("other"), source_module_id="t")
    intruder.correlation_id = call.call_id
    await nc.publish(
        subjects.control(streamer.module_id, streamer.instance_id),
        streaming.cancel(intruder, source_module_id="t").SerializeToString(),
    )
    await asyncio.sleep(0.1)  # a window for what must not happen: the intruder's cancel taking effect
    assert not streamer.cancelled_at
    await call.close()
    await eventually(lambda: streamer.cancelled_at, "the caller's own cancel to reach the handler", timeout=0.5)


async def test_a_caller_leaving_while_the_stream_opens_still_cancels_it(nc: NATS) -> None:
    """Cancelled before the module's ACCEPTED arrived, the router still learns the control subject and cancels."""
    control = subjects.control("slow", "slow-acceptor-1")
    cancels = await nc.subscribe(control)

    arrived = asyncio.Event()

    async def accept_late(msg: Msg) -> None:
        arrived.set()
        await asyncio.sleep(0.2)  # a module slow to accept: what the test is about
        request = decode(msg.data)
        await msg.respond(streaming.accepted(request, control, source_module_id="slow").SerializeToString())

    acceptor = await nc.subscribe(subjects.call("*", "test.slow-accept"), cb=accept_late)
    try:
        router = Router(nc, source_id="test")
        request = new_request("test.slow-accept", b"{}", tenant_id=unique("tenant"), source_module_id="t")
        opening = asyncio.create_task(router.open_stream(request))
        await asyncio.wait_for(arrived.wait(), 2)  # the call is out; its ACCEPTED is not back yet
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        cancel = decode((await cancels.next_msg(timeout=1)).data)
        assert cancel.type == MessageType.CANCEL and cancel.correlation_id == request.correlation_id
    finally:
        await acceptor.unsubscribe()
        await cancels.unsubscribe()


async def test_a_stream_reports_its_end_once_also_when_the_module_never_confirms_a_cancel(nc: NATS) -> None:
    """Closed while running, a stream waits ``cancel_wait`` for the module's last word, then ends
    with the router's own CANCELLED — recorded, and told to ``on_end`` exactly once."""
    control = subjects.control("deaf", "deaf-1")
    cancels = await nc.subscribe(control)

    async def accept(msg: Msg) -> None:
        request = decode(msg.data)
        await msg.respond(streaming.accepted(request, control, source_module_id="deaf").SerializeToString())

    acceptor = await nc.subscribe(subjects.call("*", "test.deaf"), cb=accept)
    ends: list = []
    try:
        router = Router(nc, source_id="test", cancel_wait=0.2)
        tenant = unique("tenant")
        request = new_request("test.deaf", b"{}", tenant_id=tenant, source_module_id="t")
        stream = await router.open_stream(request, on_end=ends.append)
        started = time.monotonic()
        await stream.close()
        waited = time.monotonic() - started
        await stream.close()  # closing again neither waits nor ends it twice
        assert (await cancels.next_msg(timeout=1)).data
    finally:
        await acceptor.unsubscribe()
        await cancels.unsubscribe()
    assert 0.2 <= waited < 1.0
    assert len(ends) == 1 and ends[0] is stream.end
    assert ends[0].type == MessageType.ERROR and ends[0].error.code == "CANCELLED"
    assert ends[0].source_module_id == "test"
    records = await _records(nc, f"mcp.res.{tenant}.test.deaf", 1)
    assert [m.id for _, m in records] == [ends[0].id]  # what the client was told is in the log
