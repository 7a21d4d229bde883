"""The streaming example capabilities: image.upscale (Pillow) and text.summarize.stream."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest
from nats.aio.client import Client as NATS
from PIL import Image

from democratic_ai.hub import Hub
from democratic_ai.sdk import CallError, Client
from democratic_ai.sdk.examples import ImageTools, TextTools
from democratic_ai.sdk.examples.image_tools import upscale_passes
from democratic_ai.sdk.sse import read_events

from support.gateway import Gateway
from support.modules import registered

TEXT = (
    "NATS is a messaging system built for speed. JetStream adds persistence to NATS. "
    "Streams store messages on disk. Consumers read them back at their own pace. "
    "The weather was pleasant yesterday."
)


def _png(width: int, height: int, mode: str = "RGBA", *, blank: bool = False) -> str:
    picture = Image.new(mode, (width, height))
    if not blank:
        picture.putdata(
            [(x * 10 % 256, y * 20 % 256, 128, 255)[: len(mode)] for y in range(height) for x in range(width)]
        )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
async def image_tools(nc: NATS) -> AsyncIterator[ImageTools]:
    module = ImageTools()
    await module.start(nc)
    yield module
    await module.stop(grace=1.0)


@pytest.fixture
async def text_tools(nc: NATS) -> AsyncIterator[TextTools]:
    module = TextTools()
    await module.start(nc)
    yield module
    await module.stop(grace=1.0)


def test_upscale_passes_multiply_to_the_scale() -> None:
    for scale in (2, 3, 4):
        factors = upscale_passes(scale)
        assert all(1 < f <= 2 for f in factors)
        product = 1.0
        for factor in factors:
            product *= factor
        assert product == pytest.approx(scale)


async def test_upscale_streams_progress_then_the_png(nc: NATS, image_tools: ImageTools) -> None:
    chunks = [c async for c in Client(nc).stream("image.upscale", {"image": _png(20, 10), "scale": 4})]
    progress = [c.progress for c in chunks]
    assert progress == sorted(progress) and progress[0] == pytest.approx(0.1) and progress[-1] == 1.0
    assert len(chunks) == 4  # decoded, two 2x passes, the result
    assert all(c.data is None for c in chunks[:-1]) and all(c.message for c in chunks)
    result = chunks[-1].data
    assert (result["width"], result["height"]) == (80, 40)
    picture = Image.open(io.BytesIO(base64.b64decode(result["image"])))
    assert picture.format == "PNG" and picture.size == (80, 40) and picture.mode == "RGBA"


async def test_a_plain_call_of_upscale_returns_the_image(nc: NATS, image_tools: ImageTools) -> None:
    result = await Client(nc).call("image.upscale", {"image": _png(8, 6, "RGB"), "scale": 3})
    assert (result["width"], result["height"]) == (24, 18)
    assert Image.open(io.BytesIO(base64.b64decode(result["image"]))).size == (24, 18)


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"image": "not base64!"}, "$.image"),
        ({"image": base64.b64encode(b"not an image").decode()}, "$.image"),
        ({"image": _png(1100, 1000, blank=True), "scale": 2}, "$.image"),  # 2200 x 2000 is over the limit
        ({"image": _png(4, 4), "scale": 5}, "$.scale"),
    ],
)
async def test_upscale_rejects_bad_images(nc: NATS, image_tools: ImageTools, payload: dict, path: str) -> None:
    with pytest.raises(CallError) as caught:
        async for _ in Client(nc).stream("image.upscale", payload):
            pass
    assert caught.value.code == "VALIDATION_FAILED" and caught.value.details["path"] == path


async def test_summarize_stream_sends_the_summary_sentence_by_sentence(nc: NATS, text_tools: TextTools) -> None:
    client = Client(nc)
    plain = await client.call("text.summarize", {"text": TEXT, "max_length": 120})
    chunks = [c async for c in client.stream("text.summarize.stream", {"text": TEXT, "max_length": 120})]
    assert len(chunks) >= 2
    assert [c.progress for c in chunks] == [i / len(chunks) for i in range(1, len(chunks) + 1)]
    assert " ".join(c.data["sentence"] for c in chunks) == plain["summary"]
    assert chunks[-1].data["summary"] == plain["summary"]


async def test_upscale_over_sse_through_the_gateway(gateway: Gateway, hub: Hub, nc: NATS) -> None:
    module = ImageTools()
    await module.start(nc)
    await registered(hub, module)
    try:
        body = msgspec.json.encode({"image": _png(16, 16), "scale": 2})
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{gateway.url}/v1/capabilities/image.upscale/invoke",
                data=body,
                headers={**gateway.headers, "Accept": "text/event-stream"},
            ) as response,
        ):
            assert response.status == 200
            events = [(name, msgspec.json.decode(data)) async for name, data in read_events(response.content)]
    finally:
        await module.stop(grace=1.0)
    assert [name for name, _ in events] == ["chunk", "chunk", "chunk", "done"]
    assert [doc["progress"]["fraction"] for _, doc in events[:3]] == pytest.approx([0.1, 0.9, 1.0])
    assert events[2][1]["data"]["width"] == 32 and events[3][1]["chunks"] == 3
