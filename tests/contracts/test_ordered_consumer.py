"""The one follower every in-memory view uses: in order, once, and resumed by sequence after
the server restarts or the consumer is lost — whatever position it started from."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, StreamConfig

from democratic_ai.contracts.bus import connect
from democratic_ai.contracts.ordered import OrderedConsumer
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import free_port

from support.names import unique
from support.waiting import eventually


class Recorder:
    def __init__(self) -> None:
        self.sequences: list[int] = []

    async def __call__(self, msg: Msg) -> None:
        self.sequences.append(msg.metadata.sequence.stream)

    async def reach(self, sequence: int, timeout: float = 5.0) -> None:
        await eventually(
            lambda: self.sequences and self.sequences[-1] >= sequence,
            lambda: f"sequence {sequence}; at {self.sequences[-1:]}",
            timeout=timeout,
        )


async def _publish(nc: NATS, subject: str, n: int) -> int:
    js = nc.jetstream()
    last = 0
    for i in range(n):
        last = (await js.publish(subject, str(i).encode(), timeout=0.5)).seq
    return last


@pytest.mark.slow
async def test_followers_started_by_time_and_new_only_resume_after_kill_9_of_the_server(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "bus", port=free_port())
    server.start()
    nc = await connect(server.bus("operator"), "ordered-test", max_reconnect_attempts=-1)
    followers: list[OrderedConsumer] = []
    try:
        await nc.jetstream().add_stream(StreamConfig(name="T", subjects=["t.>"]))
        await _publish(nc, "t.old", 5)
        since = datetime.now(UTC)
        await asyncio.sleep(0.01)  # time passes between the instant and the recent events
        last = await _publish(nc, "t.recent", 3)
        by_time, new_only = Recorder(), Recorder()
        followers = [
            OrderedConsumer(nc.jetstream(), "T", "t.>", by_time, start=since),
            OrderedConsumer(nc.jetstream(), "T", "t.>", new_only, start=DeliverPolicy.NEW),
        ]
        for follower in followers:
            await follower.start(timeout=5)
        assert by_time.sequences == [6, 7, 8] and new_only.sequences == []
        assert followers[1].last_sequence == last == 8  # "new only" starts after what the stream held

        server.kill()
        server.start()
        # Publishing works once the client has reconnected.
        last = await eventually(
            lambda: _publish(nc, "t.after", 3),
            "a publish after the restart",
            timeout=5,
            interval=0.05,
            ignoring=(nats.errors.Error, TimeoutError),
        )
        await by_time.reach(last, timeout=2)
        await new_only.reach(last, timeout=2)
        assert by_time.sequences == list(range(6, last + 1))  # in order, none twice, none lost
        assert new_only.sequences == list(range(9, last + 1))
        assert all(follower.resumes >= 1 for follower in followers)
    finally:
        for follower in followers:
            await follower.stop()
        await nc.close()
        server.stop()


async def test_a_lost_consumer_is_replaced_within_a_few_heartbeats(nc: NATS) -> None:
    stream, subject = unique("ORDERED").upper(), unique("ordered")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{subject}.>"]))
    recorder = Recorder()
    follower = OrderedConsumer(js, stream, f"{subject}.>", recorder, heartbeat=0.2)
    try:
        await _publish(nc, f"{subject}.a", 4)
        await follower.start(timeout=5)
        assert recorder.sequences == [1, 2, 3, 4] and follower.resumes == 0
        await js.delete_consumer(stream, follower._consumer)  # as a server that forgot it would
        await eventually(lambda: follower.resumes, "the lost consumer to be replaced", timeout=2.0, interval=0.02)
        last = await _publish(nc, f"{subject}.b", 3)
        await recorder.reach(last)
        assert recorder.sequences == list(range(1, last + 1))
    finally:
        await follower.stop()
        await js.delete_stream(stream)


async def test_catch_up_waits_for_what_another_connection_appended_and_not_for_a_purged_tail(nc: NATS) -> None:
    stream, subject = unique("CATCHUP").upper(), unique("catchup")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{subject}.>"]))
    applied: list[int] = []

    async def slow(msg: Msg) -> None:
        await asyncio.sleep(0.05)  # a fold that takes a while per message
        applied.append(msg.metadata.sequence.stream)

    await _publish(nc, f"{subject}.a", 2)
    await _publish(nc, f"{subject}.tail", 1)
    await js.purge_stream(stream, subject=f"{subject}.tail")  # the stream's last sequence (3) is gone
    follower = OrderedConsumer(js, stream, f"{subject}.>", slow)
    try:
        await follower.start(timeout=5)
        await follower.catch_up(1.0)  # returns: nothing is left to deliver, though 3 was never applied
        assert applied == [1, 2]
        last = await _publish(nc, f"{subject}.b", 5)
        await follower.catch_up(5.0)
        assert applied == [1, 2, *range(4, last + 1)]  # all five folded, not just acknowledged
    finally:
        await follower.stop()
        await js.delete_stream(stream)


class Batches:
    """An ``on_batch`` that records its batches, and fails once on the batch holding ``fail_at``."""

    def __init__(self, fail_at: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.fail_at = fail_at

    async def __call__(self, messages: list[Msg]) -> None:
        sequences = [m.metadata.sequence.stream for m in messages]
        if self.fail_at in sequences:
            self.fail_at = 0
            raise LookupError(f"cannot fold {sequences}")
        self.batches.append(sequences)

    @property
    def sequences(self) -> list[int]:
        return [s for batch in self.batches for s in batch]


async def test_a_batch_follower_starts_after_a_checkpoint_and_hands_over_batches_in_order(nc: NATS) -> None:
    stream, subject = unique("ORDERED").upper(), unique("ordered")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{subject}.>"]))
    try:
        last = await _publish(nc, f"{subject}.a", 50)
        batches = Batches()
        stop = asyncio.Event()
        follower = OrderedConsumer(
            js, stream, f"{subject}.>", on_batch=batches, batch=16, after=10, name="fold-me", description="a test fold"
        )
        task = asyncio.create_task(follower.run(stop))
        try:
            await follower.wait_for(last, timeout=5)
            info = await js.consumer_info(stream, "fold-me")  # named as asked: `nats consumer info`
            assert info.config.description == "a test fold" and info.config.durable_name is None
            last = await _publish(nc, f"{subject}.b", 5)
            await follower.wait_for(last, timeout=5)
        finally:
            stop.set()
            await task
        assert batches.sequences == list(range(11, last + 1))  # after the checkpoint, in order, once each
        assert max(len(b) for b in batches.batches) <= 16 and len(batches.batches) >= 4
        with pytest.raises(nats.js.errors.NotFoundError):  # a stopped follower leaves no consumer behind
            await js.consumer_info(stream, "fold-me")
    finally:
        await js.delete_stream(stream)


async def test_a_failing_batch_stops_the_follower_with_nothing_of_it_applied(nc: NATS) -> None:
    stream, subject = unique("ORDERED").upper(), unique("ordered")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{subject}.>"]))
    try:
        await _publish(nc, f"{subject}.a", 5)
        batches = Batches(fail_at=3)
        follower = OrderedConsumer(js, stream, f"{subject}.>", on_batch=batches, batch=1)
        with pytest.raises(LookupError, match="cannot fold"):
            await asyncio.wait_for(follower.run(asyncio.Event()), timeout=5)
        assert batches.sequences == [1, 2] and follower.last_sequence == 2
        # Started again after what was applied, it goes on from the failed batch.
        stop = asyncio.Event()
        again = OrderedConsumer(js, stream, f"{subject}.>", on_batch=batches, after=follower.last_sequence)
        task = asyncio.create_task(again.run(stop))
        try:
            await again.wait_for(5, timeout=5)
        finally:
            stop.set()
            await task
        assert batches.sequences == [1, 2, 3, 4, 5]
        with pytest.raises(TypeError, match="run"):
            await again.start()
        with pytest.raises(ValueError, match="either"):
            OrderedConsumer(js, stream, f"{subject}.>", Recorder(), on_batch=batches)
    finally:
        await js.delete_stream(stream)


async def test_a_batch_follower_replaces_a_lost_consumer_and_applies_nothing_twice(nc: NATS) -> None:
    stream, subject = unique("ORDERED").upper(), unique("ordered")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{subject}.>"]))
    batches = Batches()
    stop = asyncio.Event()
    follower = OrderedConsumer(js, stream, f"{subject}.>", on_batch=batches, name="lost-one", heartbeat=0.2)
    task = asyncio.create_task(follower.run(stop))
    try:
        await follower.wait_for(await _publish(nc, f"{subject}.a", 4), timeout=5)
        await js.delete_consumer(stream, "lost-one")  # as a server that forgot it would
        await eventually(lambda: follower.resumes, "the lost consumer to be replaced", timeout=2.0, interval=0.02)
        last = await _publish(nc, f"{subject}.b", 3)
        await follower.wait_for(last, timeout=5)
        assert batches.sequences == list(range(1, last + 1))
    finally:
        stop.set()
        await task
        await js.delete_stream(stream)
