"""A module that takes long calls, to be killed while it holds them (``dai module run support.sleeper:Sleeper``).

Its module id comes from ``DAI_TEST_MODULE_ID``: module ids are unique across tenants, and each
test registers one of its own. It prints ``started`` when a handler begins.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from democratic_ai.sdk import Module, capability

_ANY = {"type": "object"}


class Sleeper(Module):
    module_id = os.environ.get("DAI_TEST_MODULE_ID", "sleeper-test")

    @capability("test.sleep", _ANY, _ANY)
    async def sleep(self, seconds: float = 30.0) -> dict:
        print("started", flush=True)
        await asyncio.sleep(seconds)  # the long call the test kills the module during
        return {"slept": seconds}

    @capability("test.drip", _ANY, _ANY)
    async def drip(self, seconds: float = 30.0) -> AsyncIterator[dict]:
        """One chunk, then a long silence, then another."""
        yield {"i": 0}
        print("started", flush=True)
        await asyncio.sleep(seconds)  # the silence the test kills the module during
        yield {"i": 1}
