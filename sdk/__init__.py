"""The module SDK: publish capabilities with ``Module`` and ``@capability``; call them with ``Client``.

from democratic_ai.sdk import Chunk, Module, capability, event_handler

class Echo(Module):
    module_id = "echo"

    @capability("text.echo", {"type": "object", "properties": {"text": {"type": "string"}},
                             "required": ["text"]})
    async def echo(self, text: str) -> dict:
        return {"text": text}

    @capability("text.spell", {"type": "object", "properties": {"text": {"type": "string"}},
                              "required": ["text"]})
    async def spell(self, text: str):  # an async generator streams: one chunk per yield
        for i, letter in enumerate(text):
            yield Chunk({"letter": letter}, progress=(i + 1) / len(text))

    @event_handler("text.published")
    async def on_published(self, event: Event) -> None: ...
"""

from __future__ import annotations

from .capability import capability
from .client import Client, HttpClient
from .errors import CallError, DaiError, SchemaError
from .events import Event, event_handler
from .module import Module, ModuleConfig
from .streaming import Chunk

__all__ = [
    "CallError",
    "Chunk",
    "Client",
    "DaiError",
    "Event",
    "HttpClient",
    "Module",
    "ModuleConfig",
    "SchemaError",
    "capability",
    "event_handler",
]
