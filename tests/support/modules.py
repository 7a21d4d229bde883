"""The ``test.echo`` module, and waiting until the hub has registered a module."""

from __future__ import annotations

import asyncio

from democratic_ai.hub import Hub
from democratic_ai.sdk import Module, capability

from support.waiting import eventually


class Echo(Module):
    """A trivial module: answers its input, or fails on request."""

    module_id = "echo-test"

    @capability(
        "test.echo",
        input_schema={
            "type": "object",
            "properties": {"text": {"type": "string"}, "fail": {"type": "boolean"}, "sleep_ms": {"type": "integer"}},
        },
        output_schema={"type": "object"},
    )
    async def echo(self, text: str = "", fail: bool = False, sleep_ms: int = 0) -> dict:
        if sleep_ms:
            await asyncio.sleep(sleep_ms / 1000)  # a handler that takes this long: what the test asked for
        if fail:
            raise RuntimeError("asked to fail")
        return {"text": text}


async def registered(hub: Hub, module: Module, timeout: float = 5.0) -> None:
    """Wait until the hub has recorded ``module``'s manifest in the REGISTRY stream."""
    digest = module.manifest.digest()
    await eventually(
        lambda: hub.registry.digests.get(module.module_id) == digest,
        f"{module.module_id} to be registered",
        timeout=timeout,
        interval=0.02,
    )
