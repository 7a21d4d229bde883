"""A saturated module serves higher priorities first without starving lower ones; expired work never runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts import ErrorCode, MessageType, decode, new_request, subjects
from democratic_ai.contracts.headers import DAI_REMAINING_MS
from democratic_ai.hub import Router
from democratic_ai.sdk import CallError, Chunk, Client, Module, ModuleConfig, capability
from democratic_ai.sdk.scheduling import Scheduler

from support.waiting import eventually


class Worker(Module):
    """Records the order in which its handlers start; ``block`` holds the one slot until ``gate`` opens."""

    module_id = "worker-test"

    def __init__(self, config: ModuleConfig) -> None:
        super().__init__(config)
        self.gate = asyncio.Event()
        self.served: list[str] = []

    @capability(
        "test.work",
        {
            "type": "object",
            "properties": {"label": {"type": "string"}, "block": {"type": "boolean"}},
            "required": ["label"],
        },
    )
    async def work(self, label: str, block: bool = False) -> dict[str, Any]:
        self.served.append(label)
        if block:
            await self.gate.wait()
        return {"label": label}

    @capability(
        "test.work.stream", {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
    )
    async def work_stream(self, label: str) -> AsyncIterator[Chunk]:
        self.served.append(label)
        yield Chunk({"label": label}, progress=1.0)


@pytest.fixture
async def worker(nc: NATS) -> AsyncIterator[Worker]:
    # Aging of 20 ms per level: a call that waited 180 ms ranks with a fresh priority-9 one.
    module = Worker(ModuleConfig(max_concurrency=1, priority_aging=0.02))
    await module.start(nc)
    yield module
    module.gate.set()
    await module.stop(grace=1.0)


async def _saturate(worker: Worker, client: Client) -> asyncio.Task[Any]:
    """Occupy the worker's only slot until its gate opens."""
    worker.gate = asyncio.Event()
    blocker = asyncio.create_task(client.call("test.work", {"label": "blocker", "block": True}))
    await eventually(lambda: worker.scheduler.running == 1, "1 running at the scheduler", timeout=2.0, interval=0.002)
    return blocker


async def test_saturated_module_serves_priority_9_before_0_and_0_is_not_starved(nc: NATS, worker: Worker) -> None:
    client = Client(nc)

    # Queued together: the priority-9 calls go first.
    blocker = await _saturate(worker, client)
    low = asyncio.create_task(client.call("test.work", {"label": "low"}, priority=0))
    await eventually(lambda: worker.scheduler.waiting == 1, "1 waiting at the scheduler", timeout=2.0, interval=0.002)
    highs = [asyncio.create_task(client.call("test.work", {"label": f"high-{i}"}, priority=9)) for i in range(4)]
    await eventually(lambda: worker.scheduler.waiting == 5, "5 waiting at the scheduler", timeout=2.0, interval=0.002)
    worker.gate.set()
    await asyncio.gather(blocker, low, *highs)
    assert worker.served == ["blocker", "high-0", "high-1", "high-2", "high-3", "low"]

    # The priority-0 call waited 300 ms (15 levels of aging) before the others came: it goes first.
    worker.served.clear()
    blocker = await _saturate(worker, client)
    low = asyncio.create_task(client.call("test.work", {"label": "low"}, priority=0))
    await eventually(lambda: worker.scheduler.waiting == 1, "1 waiting at the scheduler", timeout=2.0, interval=0.002)
    await asyncio.sleep(0.3)  # the time that ages the waiting call: what the test is about
    highs = [asyncio.create_task(client.call("test.work", {"label": f"high-{i}"}, priority=9)) for i in range(4)]
    await eventually(lambda: worker.scheduler.waiting == 5, "5 waiting at the scheduler", timeout=2.0, interval=0.002)
    worker.gate.set()
    await asyncio.gather(blocker, low, *highs)
    assert worker.served == ["blocker", "low", "high-0", "high-1", "high-2", "high-3"]


async def test_a_call_that_expires_while_queued_is_never_executed(nc: NATS, worker: Worker) -> None:
    client = Client(nc)
    blocker = await _saturate(worker, client)
    started = time.monotonic()
    with pytest.raises(CallError) as caught:
        await client.call("test.work", {"label": "late"}, ttl=1)
    assert caught.value.code == "TIMEOUT" and 0.9 < time.monotonic() - started < 1.5
    with pytest.raises(CallError) as caught:
        async for _ in client.stream("test.work.stream", {"label": "late-stream"}, ttl=1):
            pass
    assert caught.value.code == "TIMEOUT"
    # Dropped at their deadlines, not at their turn.
    await eventually(lambda: worker.scheduler.waiting == 0, "0 waiting at the scheduler", timeout=2.0, interval=0.002)
    worker.gate.set()
    await blocker
    assert await client.call("test.work", {"label": "after"}) == {"label": "after"}
    assert worker.served == ["blocker", "after"]


async def test_a_call_that_arrives_expired_is_never_executed(nc: NATS, worker: Worker) -> None:
    request = new_request("test.work", b'{"label": "stale"}', tenant_id="system", source_module_id="t", ttl=1)
    request.timestamp.FromNanoseconds(time.time_ns() - 5_000_000_000)  # sent 5 s ago with a 1 s ttl

    # The router does not even send it...
    started = time.monotonic()
    answer = await Router(nc, source_id="t").call(request)
    assert answer.type == MessageType.ERROR and answer.error.code == ErrorCode.TIMEOUT
    assert time.monotonic() - started < 0.1
    # ...and a module that receives it anyway, told no time is left, drops it.
    with pytest.raises(TimeoutError):
        await nc.request(
            subjects.call("system", "test.work"),
            request.SerializeToString(),
            timeout=0.3,
            headers={DAI_REMAINING_MS: "-4000"},
        )
    await asyncio.sleep(0.05)  # a window for what must not happen: the module serving it late
    assert worker.served == []


@pytest.mark.parametrize("skew", [-30, 30])
async def test_a_module_counts_the_time_left_not_the_callers_clock(nc: NATS, worker: Worker, skew: int) -> None:
    """A caller whose clock is 30 s off stamps its calls 30 s off; the module serves them by the
    time left they carry (or, without it, by their ttl from arrival), never by the stamp."""
    for label, headers in ((f"left-{skew}", {DAI_REMAINING_MS: "5000"}), (f"ttl-{skew}", None)):
        request = new_request(
            "test.work", b'{"label": "%s"}' % label.encode(), tenant_id="system", source_module_id="t", ttl=5
        )
        request.timestamp.FromNanoseconds(time.time_ns() + skew * 1_000_000_000)
        answer = await nc.request(
            subjects.call("system", "test.work"), request.SerializeToString(), timeout=2, headers=headers
        )
        assert decode(answer.data).type == MessageType.RESPONSE
    assert worker.served == [f"left-{skew}", f"ttl-{skew}"]


async def test_a_module_drops_a_queued_call_when_the_time_left_it_was_sent_runs_out(nc: NATS, worker: Worker) -> None:
    client = Client(nc)
    blocker = await _saturate(worker, client)
    request = new_request("test.work", b'{"label": "short"}', tenant_id="system", source_module_id="t", ttl=30)
    started = time.monotonic()
    with pytest.raises(TimeoutError):  # 300 ms left, whatever the 30 s ttl says: dropped, never answered
        await nc.request(
            subjects.call("system", "test.work"),
            request.SerializeToString(),
            timeout=1.0,
            headers={DAI_REMAINING_MS: "300"},
        )
    await eventually(lambda: worker.scheduler.waiting == 0, "0 waiting at the scheduler", timeout=2.0, interval=0.002)
    assert time.monotonic() - started < 1.5
    worker.gate.set()
    await blocker
    assert worker.served == ["blocker"]


async def test_aged_priority_orders_the_queue() -> None:
    """The scheduler on its own, with a clock the test moves: higher first, the long-waiting catch up."""
    now = [0.0]
    scheduler = Scheduler(limit=1, aging=1.0, clock=lambda: now[0])
    order: list[str] = []
    assert scheduler.try_acquire()

    async def wait(label: str, priority: int) -> None:
        if await scheduler.acquire(priority, None):
            order.append(label)
            scheduler.release()

    tasks = []
    for label, priority, at in (("p0-early", 0, 0.0), ("p5", 5, 3.0), ("p9-late", 9, 10.0), ("p2", 2, 10.0)):
        now[0] = at
        tasks.append(asyncio.create_task(wait(label, priority)))
        await asyncio.sleep(0)  # lets the task queue up before the clock moves on
    assert scheduler.waiting == 4 and not scheduler.try_acquire()
    # Ranks (smaller first): p0-early 0 - 0 = 0; p5 3 - 5 = -2; p9-late 10 - 9 = 1; p2 10 - 2 = 8.
    scheduler.release()
    await asyncio.gather(*tasks)
    assert order == ["p5", "p0-early", "p9-late", "p2"]
    assert scheduler.running == 0


async def test_an_expired_or_cancelled_waiter_gives_up_its_turn() -> None:
    scheduler = Scheduler(limit=1, aging=1.0)
    assert scheduler.try_acquire()
    expiring = asyncio.create_task(scheduler.acquire(9, time.monotonic() + 0.02))
    cancelled = asyncio.create_task(scheduler.acquire(9, None))
    patient = asyncio.create_task(scheduler.acquire(0, None))
    assert await expiring is False  # answered at its deadline, while the slot is still taken
    cancelled.cancel()
    scheduler.release()
    assert await patient is True
    assert cancelled.cancelled() and scheduler.running == 1
