"""One body limit rule: a capability's declared max_input_bytes, up to the gateway's ceiling.

``image.upscale`` declares what its schema allows (a 4,000,000-character image), so a 2.5 MB
body reaches it; a body over its declaration, or over the gateway's ceiling, answers 413 naming
the limit; a capability that declares nothing keeps the 1 MiB default. The WebSocket answers an
oversized call with an ERROR frame and goes on; the module itself refuses an input over its
declaration when it is called over NATS directly.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from nats.aio.client import Client as NATS
from PIL import Image

from democratic_ai.contracts import ErrorCode, MessageType, decode, new_request, subjects
from democratic_ai.contracts.registry_events import ModuleManifest
from democratic_ai.hub import Hub
from democratic_ai.sdk import Module, capability
from democratic_ai.sdk.examples.image_tools import MAX_INPUT_BYTES, ImageTools
from democratic_ai.services.gateway import body_ceiling_from_env
from democratic_ai.services.gateway.input_limits import ENVELOPE_BYTES, effective_ceiling
from democratic_ai.services.gateway.state import INPUT_LIMITS

from support.gateway import Gateway, StartGateway
from support.modules import registered
from support.names import unique
from support.waiting import eventually

MiB = 1024 * 1024


@pytest.fixture
async def image_tools(nc: NATS, hub: Hub) -> AsyncIterator[ImageTools]:
    module = ImageTools()
    await module.start(nc)
    await registered(hub, module)
    yield module
    await module.stop(grace=1.0)


def _png_base64(side: int) -> str:
    """An uncompressed PNG of ``side`` x ``side`` pixels (about 3 bytes a pixel), as base64."""
    picture = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=0)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


async def _invoke(gateway: Gateway, capability: str, body: bytes) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/capabilities/{capability}/invoke",
            data=io.BytesIO(body),
            headers={"X-API-Key": gateway.api_key, "Content-Type": "application/json"},
        ) as response,
    ):
        return response.status, await response.json()


async def _listed(gateway: Gateway, action: str) -> int:
    """The ``max_input_bytes`` that ``GET /v1/capabilities`` lists for ``action``, once the registry
    read model (a projection, a moment behind the gateway's own index) holds it."""

    async def listed() -> int | None:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{gateway.url}/v1/capabilities", headers={"X-API-Key": gateway.api_key}) as response,
        ):
            found = {c["action"]: c["max_input_bytes"] for c in (await response.json())["capabilities"]}
        return found.get(action)

    return await eventually(listed, f"{action} in GET /v1/capabilities", timeout=10)


async def test_a_body_up_to_the_declared_limit_reaches_the_capability(
    gateway: Gateway, image_tools: ImageTools
) -> None:
    image = _png_base64(800)
    body = json.dumps({"image": image, "scale": 2}).encode()
    assert 2 * MiB < len(body) < MAX_INPUT_BYTES
    status, answer = await _invoke(gateway, "image.upscale", body)
    assert status == 200, answer
    assert (answer["result"]["width"], answer["result"]["height"]) == (1600, 1600)
    assert await _listed(gateway, "image.upscale") == MAX_INPUT_BYTES


async def test_a_body_over_the_declared_limit_is_413_naming_it(gateway: Gateway, image_tools: ImageTools) -> None:
    body = json.dumps({"image": "A" * MAX_INPUT_BYTES}).encode()
    status, answer = await _invoke(gateway, "image.upscale", body)
    assert status == 413, answer
    assert answer["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert answer["error"]["details"] == {"max_bytes": MAX_INPUT_BYTES, "capability": "image.upscale"}
    assert str(MAX_INPUT_BYTES) in answer["error"]["message"]

    # Sent in chunks (no Content-Length), it is refused as soon as the limit is passed.
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v1/capabilities/image.upscale/invoke",
            data=chunks(),
            headers={"X-API-Key": gateway.api_key, "Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == 413 and (await response.json())["error"]["details"]["max_bytes"] == MAX_INPUT_BYTES


async def test_a_capability_that_declares_nothing_keeps_1_mib(gateway: Gateway, image_tools: ImageTools) -> None:
    status, answer = await _invoke(gateway, "text.summarize", json.dumps({"text": "a" * (MiB + 1)}).encode())
    assert status == 413 and answer["error"]["details"] == {"max_bytes": MiB, "capability": "text.summarize"}


async def test_the_ceiling_bounds_every_declaration(start_gateway: StartGateway, image_tools: ImageTools) -> None:
    gateway = await start_gateway(body_ceiling_bytes=3 * MiB)
    body = json.dumps({"image": "A" * (3 * MiB)}).encode()
    status, answer = await _invoke(gateway, "image.upscale", body)
    assert status == 413 and answer["error"]["details"] == {"max_bytes": 3 * MiB, "capability": "image.upscale"}
    status, answer = await _invoke(gateway, "image.upscale", json.dumps({"image": _png_base64(800)}).encode())
    assert status == 200, answer
    assert await _listed(gateway, "image.upscale") == 3 * MiB


async def test_the_ceiling_never_exceeds_what_nats_carries(start_gateway: StartGateway, nc: NATS) -> None:
    gateway = await start_gateway(body_ceiling_bytes=100 * MiB)
    assert gateway.app[INPUT_LIMITS].ceiling == nc.max_payload - ENVELOPE_BYTES
    assert effective_ceiling(None, 8 * MiB) == 8 * MiB - ENVELOPE_BYTES
    assert effective_ceiling(2 * MiB, 8 * MiB) == 2 * MiB


def test_the_ceiling_from_the_environment() -> None:
    assert body_ceiling_from_env({}) is None
    assert body_ceiling_from_env({"DAI_MAX_BODY_BYTES": "4_194_304"}) == 4 * MiB
    for bad in ("abc", "-1", "12"):
        with pytest.raises(ValueError, match="DAI_MAX_BODY_BYTES"):
            body_ceiling_from_env({"DAI_MAX_BODY_BYTES": bad})


async def _ws(session: aiohttp.ClientSession, gateway: Gateway) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(f"{gateway.url}/v1/ws", headers={"X-API-Key": gateway.api_key}, max_msg_size=32 * MiB)
    assert (await ws.receive_json(timeout=5))["type"] == "READY"
    return ws


async def test_the_websocket_answers_an_oversized_call_with_an_error_and_goes_on(
    gateway: Gateway, image_tools: ImageTools
) -> None:
    ceiling = gateway.app[INPUT_LIMITS].ceiling
    async with aiohttp.ClientSession() as session:
        ws = await _ws(session, gateway)
        # Over the capability's declaration, within what the socket reads.
        await ws.send_str(
            json.dumps(
                {
                    "type": "REQUEST",
                    "correlation_id": "big",
                    "action": "image.upscale",
                    "payload": {"image": "A" * MAX_INPUT_BYTES},
                }
            )
        )
        answer = await ws.receive_json(timeout=10)
        assert (answer["type"], answer["correlation_id"], answer["error"]["code"]) == (
            "ERROR",
            "big",
            "PAYLOAD_TOO_LARGE",
        )
        assert answer["error"]["details"] == {"max_bytes": MAX_INPUT_BYTES, "capability": "image.upscale"}
        # Over the ceiling (and its envelope's room), still within the 16 MiB read limit.
        await ws.send_str(
            json.dumps(
                {
                    "type": "REQUEST",
                    "correlation_id": "huge",
                    "action": "image.upscale",
                    "payload": {"image": "A" * (ceiling + ENVELOPE_BYTES)},
                }
            )
        )
        answer = await ws.receive_json(timeout=10)
        assert (answer["correlation_id"], answer["error"]["code"]) == ("huge", "PAYLOAD_TOO_LARGE")
        assert answer["error"]["details"] == {"max_bytes": ceiling}
        # The socket goes on: a 2.5 MB call (over the 1 MiB default) is served.
        await ws.send_str(
            json.dumps(
                {
                    "type": "REQUEST",
                    "correlation_id": "ok",
                    "action": "image.upscale",
                    "payload": {"image": _png_base64(800)},
                }
            )
        )
        frames = []
        while not (frames and (frames[-1].get("final") or frames[-1]["type"] in ("RESPONSE", "ERROR"))):
            frames.append(await ws.receive_json(timeout=30))
        assert frames[0]["type"] == "ACCEPTED" and frames[-1]["type"] == "STREAM_CHUNK", frames[-1]
        assert [
            f["payload"]["width"] for f in frames if isinstance(f.get("payload"), dict) and "width" in f["payload"]
        ] == [1600]
        await ws.close()


class Small(Module):
    module_id = "small-input-test"

    @capability("test.small", {"type": "object"}, {"type": "object"}, max_input_bytes=100)
    async def small(self, **fields: object) -> dict:
        return {"fields": len(fields)}


async def test_the_module_refuses_an_input_over_its_declaration(nc: NATS) -> None:
    """Calls reach a module over NATS without the gateway, too."""
    module = Small()
    await module.start(nc)
    try:
        assert module.manifest.capabilities[0].max_input_bytes == 100
        tenant = unique("t")
        for payload, code in ((b'{"a": 1}', ""), (json.dumps({"a": "x" * 100}).encode(), ErrorCode.PAYLOAD_TOO_LARGE)):
            request = new_request("test.small", payload, tenant_id=tenant, source_module_id="test")
            reply = decode(
                (await nc.request(subjects.call(tenant, "test.small"), request.SerializeToString(), timeout=5)).data
            )
            if code:
                assert reply.type == MessageType.ERROR and reply.error.code == code, reply
                assert "100 bytes" in reply.error.message
            else:
                assert reply.type == MessageType.RESPONSE, reply
    finally:
        await module.stop(grace=1.0)


def test_a_declared_limit_must_be_a_positive_number_of_bytes() -> None:
    for bad in (0, -1, 2**31, 1.5, True):
        with pytest.raises(ValueError, match="max_input_bytes"):
            capability("test.bad", {"type": "object"}, max_input_bytes=bad)  # type: ignore[arg-type]
    manifest = ModuleManifest(module_id="m", capabilities=(Small().manifest.capabilities[0],))
    assert manifest.capabilities[0].max_input_bytes == 100
