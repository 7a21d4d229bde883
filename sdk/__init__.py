"""The module SDK: publish capabilities with ``Module`` and ``@capability``; call them with ``Client``.

    from democratic_ai.sdk import Module, capability

    class Echo(Module):
        module_id = "echo"

        @capability("text.echo", {"type": "object", "properties": {"text": {"type": "string"}}})
        async def echo(self, text: str) -> dict:
            return {"text": text}
"""

from __future__ import annotations

from .capability import capability
from .client import Client, HttpClient
from .errors import CallError, DaiError, SchemaError
from .module import Module, ModuleConfig

__all__ = ["CallError", "Client", "DaiError", "HttpClient", "Module", "ModuleConfig", "SchemaError", "capability"]
