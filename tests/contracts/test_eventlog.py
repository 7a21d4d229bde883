"""The one event-log append, against a real nats-server: the expected last subject sequence
decides between concurrent writers, and a message id makes a retry harmless."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError

from democratic_ai.contracts.bus import connect
from democratic_ai.contracts.eventlog import AppendConflict, append
from democratic_ai.ops.nats_cluster import NatsCluster

from support.names import unique


@pytest.fixture
async def log(nc: NATS) -> AsyncIterator[tuple[JetStreamContext, str]]:
    """A stream of its own (``<prefix>.>``, a two-minute duplicate window, messages of at most
    1 KiB) and its subject prefix."""
    js = nc.jetstream()
    prefix = unique("evlog")
    stream = prefix.upper().replace("-", "_")
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.>"], duplicate_window=120.0, max_msg_size=1024))
    yield js, prefix
    await js.delete_stream(stream)


async def test_expected_zero_appends_the_first_event_of_a_subject_once(log: tuple[JetStreamContext, str]) -> None:
    js, prefix = log
    first = await append(js, f"{prefix}.a", b"one", expected=0)
    assert first == 1
    with pytest.raises(AppendConflict) as refused:
        await append(js, f"{prefix}.a", b"two", expected=0)
    assert refused.value.err_code == 10071
    assert isinstance(refused.value, BadRequestError)  # callers that caught the server's refusal still do
    # Another subject of the same stream is empty: its expected 0 holds, and it gets the next sequence.
    assert await append(js, f"{prefix}.b", b"one", expected=0) == 2
    msg = await js.get_last_msg(js_stream(prefix), f"{prefix}.a")
    assert (msg.seq, msg.data) == (1, b"one")
    assert msg.headers == {"Nats-Expected-Last-Subject-Sequence": "0"}


async def test_a_stale_expected_sequence_raises_the_one_conflict(log: tuple[JetStreamContext, str]) -> None:
    js, prefix = log
    subject = f"{prefix}.aggregate"
    s1 = await append(js, subject, b"1", expected=0)
    s2 = await append(js, subject, b"2", expected=s1)
    await append(js, f"{prefix}.other", b"x")  # the stream moves on; the subject's last sequence does not
    assert await append(js, subject, b"3", expected=s2) == s2 + 2
    for stale in (0, s1, s2, s2 + 1):  # every sequence but the subject's last one is refused
        with pytest.raises(AppendConflict):
            await append(js, subject, b"late", expected=stale)
    assert (await js.stream_info(js_stream(prefix))).state.messages == 4


async def test_no_expected_sequence_appends_without_a_check(log: tuple[JetStreamContext, str]) -> None:
    js, prefix = log
    assert [await append(js, f"{prefix}.free", b"x") for _ in range(3)] == [1, 2, 3]
    msg = await js.get_last_msg(js_stream(prefix), f"{prefix}.free")
    assert not msg.headers  # no header at all, as a plain publish


async def test_a_message_id_deduplicates_a_retry_with_the_first_sequence(log: tuple[JetStreamContext, str]) -> None:
    js, prefix = log
    subject = f"{prefix}.invoice"
    first = await append(js, subject, b"issued", expected=0, msg_id="invoice-1")
    await append(js, f"{prefix}.other", b"x")  # the stream moves on
    # The retry is dropped and answers the first one's sequence, not the stream's next.
    assert await append(js, subject, b"issued", msg_id="invoice-1") == first
    assert await append(js, f"{prefix}.elsewhere", b"issued", msg_id="invoice-1") == first
    # Repeating the expected sequence too, the retry meets the subject's check first: a conflict.
    with pytest.raises(AppendConflict):
        await append(js, subject, b"issued", expected=0, msg_id="invoice-1")
    assert (await js.stream_info(js_stream(prefix))).state.messages == 2
    msg = await js.get_last_msg(js_stream(prefix), subject)
    assert (msg.seq, msg.data) == (first, b"issued")
    assert msg.headers == {"Nats-Expected-Last-Subject-Sequence": "0", "Nats-Msg-Id": "invoice-1"}
    # A new message id is a new event, held to the expected sequence like any other.
    with pytest.raises(AppendConflict):
        await append(js, subject, b"other", expected=0, msg_id="invoice-2")
    assert await append(js, subject, b"other", expected=first, msg_id="invoice-2") == 3


async def test_other_refusals_pass_through_unchanged(log: tuple[JetStreamContext, str]) -> None:
    js, prefix = log
    # Too large for the stream: a bad request of the server's, not a conflict on the subject.
    with pytest.raises(BadRequestError) as refused:
        await append(js, f"{prefix}.s", b"x" * 2048, expected=0)
    assert not isinstance(refused.value, AppendConflict)
    assert refused.value.err_code != 10071
    assert await append(js, f"{prefix}.s", b"x", expected=0) == 1


def js_stream(prefix: str) -> str:
    return prefix.upper().replace("-", "_")


async def test_racing_writers_on_a_replicated_stream_lose_with_a_conflict(tmp_path: Path) -> None:
    """A replicated stream's leader refuses a racing append with another code (10164, "wrong
    last sequence", while the winner is still being replicated): still a conflict to decide
    again on, not a refusal to give up on."""
    with NatsCluster(tmp_path) as cluster:
        nc = await connect(cluster.bus("operator"), "eventlog-cluster-test")
        try:
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="RACE", subjects=["race.>"], num_replicas=3))
            outcomes = await asyncio.gather(
                *(append(js, "race.one", b"x", expected=0) for _ in range(20)), return_exceptions=True
            )
        finally:
            await nc.close()
    winners = [o for o in outcomes if isinstance(o, int)]
    assert winners == [1], outcomes
    assert all(isinstance(o, AppendConflict) for o in outcomes if not isinstance(o, int)), outcomes
