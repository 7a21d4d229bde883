"""Modules answer the NATS micro protocol: ``$SRV.PING|INFO|STATS`` as ``nats micro ls|info|stats`` asks them."""

from __future__ import annotations

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats

from democratic_ai.sdk import CallError, Client
from democratic_ai.sdk.examples import TextTools

from support.waiting import eventually


async def _ask(nc: NATS, subject: str) -> dict:
    return msgspec.json.decode((await nc.request(subject, b"", timeout=2)).data)


async def _ask_all(nc: NATS, subject: str, expected: set[str]) -> list[dict]:
    """The answers to one request, as ``nats micro ls`` collects them, once the instances ``expected`` have answered."""
    inbox = nc.new_inbox()
    answers: list[dict] = []

    async def collect(msg: object) -> None:
        answers.append(msgspec.json.decode(msg.data))  # type: ignore[attr-defined]

    subscription = await nc.subscribe(inbox, cb=collect)
    await nc.publish(subject, b"", reply=inbox)
    await eventually(
        lambda: expected <= {answer["id"] for answer in answers}, f"{sorted(expected)} to answer {subject}", timeout=2.0
    )
    await subscription.unsubscribe()
    return answers


async def test_info_lists_the_call_routes_with_their_queue_groups(nc: NATS) -> None:
    module = TextTools()
    await module.start(nc)
    try:
        ping = ServicePing.from_dict(await _ask(nc, f"$SRV.PING.text-tools.{module.instance_id}"))
        assert (ping.type, ping.name, ping.id, ping.version) == (
            "io.nats.micro.v1.ping_response",
            "text-tools",
            module.instance_id,
            "1.0.0",
        )
        info = ServiceInfo.from_dict(await _ask(nc, f"$SRV.INFO.text-tools.{module.instance_id}"))
        assert info.type == "io.nats.micro.v1.info_response"
        assert info.description == "Extractive summaries and text statistics, in pure Python."
        routes = {(e.name, e.subject, e.queue_group) for e in info.endpoints}
        assert ("text_summarize", "mcp.call.*.text.summarize", "text.summarize") in routes
        assert ("text_summarize-direct", "mcp.direct.text-tools.*.text.summarize", "text-tools") in routes
        assert len(routes) == 2 * len(module.capabilities)
        summarize = next(e for e in info.endpoints if e.name == "text_summarize")
        assert summarize.metadata["capability"] == "text.summarize" and summarize.metadata["route"] == "capability"
    finally:
        await module.stop()
    with pytest.raises(NoRespondersError):
        await nc.request(f"$SRV.PING.text-tools.{module.instance_id}", b"", timeout=1)


async def test_stats_count_requests_errors_and_latency_per_route(nc: NATS) -> None:
    module = TextTools()
    await module.start(nc)
    client = Client(nc)
    try:
        text = "NATS is a messaging system. JetStream adds persistence. Streams store messages."
        await client.call("text.summarize", {"text": text, "max_length": 40}, target_module_id="text-tools")
        with pytest.raises(CallError):
            await client.call("text.summarize", {"text": ""}, target_module_id="text-tools")
        stats = ServiceStats.from_dict(await _ask(nc, f"$SRV.STATS.text-tools.{module.instance_id}"))
    finally:
        await module.stop()
    assert stats.type == "io.nats.micro.v1.stats_response"
    direct = next(e for e in stats.endpoints if e.name == "text_summarize-direct")
    assert (direct.num_requests, direct.num_errors) == (2, 1)
    assert direct.last_error.startswith("VALIDATION_FAILED: input $.text")
    assert direct.processing_time > 0
    assert direct.average_processing_time == direct.processing_time // 2
    untouched = next(e for e in stats.endpoints if e.name == "text_summarize")
    assert (untouched.num_requests, untouched.processing_time, untouched.average_processing_time) == (0, 0, 0)


async def test_every_instance_answers_discovery(nc: NATS) -> None:
    first, second = TextTools(), TextTools()
    await first.start(nc)
    await second.start(nc)
    ours = {first.instance_id, second.instance_id}
    try:
        everyone = await _ask_all(nc, "$SRV.PING", ours)
        of_kind = await _ask_all(nc, "$SRV.INFO.text-tools", ours)
    finally:
        await first.stop()
        await second.stop()
    assert ours <= {answer["id"] for answer in everyone}
    assert {answer["id"] for answer in of_kind if answer["id"] in ours} == ours
    assert all(answer["type"] == "io.nats.micro.v1.info_response" for answer in of_kind)
