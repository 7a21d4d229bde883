"""A call whose handler cannot even be called is answered with its error, never left to time out."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from democratic_ai.contracts import MessageType, new_request
from democratic_ai.sdk import Module, capability
from democratic_ai.sdk.capability import definitions_of
from democratic_ai.sdk.execution import Invocation


async def miswrapped(self: object, text: str) -> dict[str, Any]:
    """The function whose signature the decorator below copies."""
    return {"text": text}


class Miswrapped(Module):
    """A handler behind a decorator that copies another function's signature (``functools.wraps``
    of the wrong function): the SDK binds the input to the signature it sees, the call raises."""

    module_id = "miswrapped"

    @capability(
        "test.miswrapped",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        output_schema={"type": "object"},
    )
    @functools.wraps(miswrapped)
    async def miswrapped(self, *, other: str = "") -> dict[str, Any]:
        return {"other": other}


def test_a_handler_that_raises_when_called_is_answered_module_error() -> None:
    module = Miswrapped()
    definition = definitions_of(module)["test.miswrapped"]
    request = new_request(
        "test.miswrapped", msgspec.json.encode({"text": "hi"}), tenant_id="t", source_module_id="gateway"
    )
    result, error = Invocation(module.module_id, definition, request).start(module.miswrapped)
    assert result is None and error is not None
    assert error.type == MessageType.ERROR and error.correlation_id == request.correlation_id
    assert error.error.code == "MODULE_ERROR", error
