"""An MCP server's tools as capabilities: their names mapped, their schemas taken, their calls forwarded.

:func:`map_tools` names each tool's capability: ``<prefix>.<tool>`` (the prefix is the module id
unless ``--prefix`` says otherwise), with the tool's name made a valid capability name (see
:func:`capability_name`): ``getForecast`` becomes ``weather.get_forecast``, ``files/read``
``weather.files_read``. Two tools that would get one name keep them apart with ``_2``, ``_3`` …
in the order of their names, so the mapping does not depend on the order the server lists them.

:func:`module_class` builds a :class:`~democratic_ai.sdk.Module` subclass with one streaming
capability per tool, a plain ``@capability`` handler that forwards the call: the SDK serves it
like any other (input checked against the tool's ``inputSchema``, output against its
``outputSchema``, concurrency, ttl, records, cancellation). Every tool streams because any tool may
report progress: each MCP progress notification becomes a chunk with progress (and its message),
and the result the last chunk with data — a plain call gets that data alone. A result marked
``isError`` is a ``MODULE_ERROR`` with the tool's text; a cancelled call cancels the ``tools/call``,
which the MCP client sends as ``notifications/cancelled`` (stdio) or by closing the request's
stream (Streamable HTTP).

A tool with an ``outputSchema`` answers its ``structuredContent``; one without answers
``{"content": [...]}``, the MCP content blocks as the server sent them (and ``structuredContent``
if it sent one anyway).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mcp_types
from mcp import Client as McpClient, MCPError

from democratic_ai.contracts import ErrorCode
from democratic_ai.contracts.subjects import validate_capability
from democratic_ai.sdk import CallError, Chunk, Module, ModuleConfig, capability

__all__ = ["CONTENT_SCHEMA", "MappedTool", "ToolModule", "capability_name", "map_tools", "module_class"]

MAX_TOKENS = 8  # a capability has at most eight dotted tokens (contracts/subjects.py)
MAX_TOKEN = 64  # characters in one token

# What a tool without an outputSchema answers: the content blocks of its result.
CONTENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"content": {"type": "array", "items": {"type": "object"}}, "structuredContent": {}},
    "required": ["content"],
}

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_INVALID = re.compile(r"[^a-z0-9_.-]")


def capability_name(prefix: str, tool: str) -> str:
    """``<prefix>.<tool>``, the tool's name made dotted lowercase tokens of ``a-z 0-9 _ -``.

    camelCase becomes snake_case, any other character ``_``, empty tokens (``a..b``, a leading
    dot) go, a token is cut at 64 characters and tokens past the eighth are joined to it with ``_``.
    """
    name = _INVALID.sub("_", _CAMEL.sub("_", tool).lower())
    tokens = [token[:MAX_TOKEN] for token in name.split(".") if token] or ["tool"]
    room = MAX_TOKENS - len(prefix.split("."))
    if len(tokens) > room:
        tokens = [*tokens[: room - 1], "_".join(tokens[room - 1 :])[:MAX_TOKEN]]
    return validate_capability(".".join([prefix, *tokens]))


@dataclass(frozen=True, slots=True)
class MappedTool:
    """One tool of the server and the capability that publishes it."""

    tool: str
    capability: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None  # the tool's; None: it answers CONTENT_SCHEMA


def map_tools(prefix: str, tools: Sequence[mcp_types.Tool], only: frozenset[str] = frozenset()) -> list[MappedTool]:
    """Each tool (of those named in ``only``, if any) with its capability, in the order of the capabilities' names."""
    validate_capability(prefix)
    taken: set[str] = set()
    mapped = []
    for tool in sorted(tools, key=lambda t: t.name):
        if only and tool.name not in only:
            continue
        base = capability_name(prefix, tool.name)
        head, _, last = base.rpartition(".")
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{head}.{last[: MAX_TOKEN - 4]}_{n}"
        taken.add(name)
        # The SDK hands a tool's arguments over as keyword arguments: an object, as MCP requires.
        schema = dict(tool.input_schema) if tool.input_schema.get("type") else {**tool.input_schema, "type": "object"}
        mapped.append(
            MappedTool(
                tool=tool.name,
                capability=name,
                description=tool.description or tool.title or "",
                input_schema=schema,
                output_schema=tool.output_schema,
            )
        )
    return sorted(mapped, key=lambda m: m.capability)


class ToolModule(Module):
    """The base of the classes :func:`module_class` builds: it holds the MCP client its handlers use."""

    module_id = ""  # set by module_class

    def __init__(self, client: McpClient, lost: asyncio.Event, config: ModuleConfig | None = None) -> None:
        self.mcp = client
        self.lost = lost  # set when the server closed the connection: the bridge then ends
        super().__init__(config)

    async def forward(self, tool: MappedTool, arguments: dict[str, Any]) -> AsyncIterator[Chunk]:
        """``tools/call`` of ``tool``: a chunk per progress notification, then one with the result's data."""
        chunks: asyncio.Queue[Chunk | None] = asyncio.Queue()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            chunks.put_nowait(_progress_chunk(progress, total, message))

        call = asyncio.create_task(self.mcp.call_tool(tool.tool, arguments, progress_callback=on_progress))
        call.add_done_callback(lambda _: chunks.put_nowait(None))
        try:
            while (chunk := await chunks.get()) is not None:
                yield chunk
            result = call.result()
        except MCPError as exc:
            if exc.error.code == mcp_types.CONNECTION_CLOSED:
                self.lost.set()
                raise CallError(
                    ErrorCode.MODULE_ERROR,
                    f"the MCP server closed the connection during {tool.tool!r}",
                    {"tool": tool.tool},
                ) from None
            raise CallError(
                ErrorCode.MODULE_ERROR,
                f"the MCP server refused tools/call of {tool.tool!r}: {exc.error.message}",
                {"tool": tool.tool, "mcp_code": exc.error.code},
            ) from None
        finally:
            if not call.done():
                # Cancelled here (the caller cancelled, or the module stops): the MCP client tells the
                # server (notifications/cancelled, or it closes the request's stream) before it returns.
                call.cancel()
                await asyncio.gather(call, return_exceptions=True)
        if result.is_error:
            text = _text(result.content) or f"the tool {tool.tool!r} failed"
            raise CallError(ErrorCode.MODULE_ERROR, text, {"tool": tool.tool})
        yield Chunk(_data(tool, result))


def _progress_chunk(progress: float, total: float | None, message: str | None) -> Chunk:
    """An MCP progress notification as a chunk: a fraction only when the server says of what total."""
    fraction = min(max(progress / total, 0.0), 1.0) if total and math.isfinite(progress / total) else None
    return Chunk(progress=fraction, message=message or ("" if fraction is not None else f"progress {progress:g}"))


def _text(content: Sequence[mcp_types.ContentBlock]) -> str:
    return "\n".join(block.text for block in content if isinstance(block, mcp_types.TextContent))


def _data(tool: MappedTool, result: mcp_types.CallToolResult) -> Any:
    if tool.output_schema is not None:
        if result.structured_content is None:
            raise CallError(
                ErrorCode.MODULE_ERROR,
                f"the tool {tool.tool!r} declares an outputSchema but answered no structuredContent",
                {"tool": tool.tool},
            )
        return result.structured_content
    data: dict[str, Any] = {
        "content": [b.model_dump(mode="json", by_alias=True, exclude_none=True) for b in result.content]
    }
    if result.structured_content is not None:
        data["structuredContent"] = result.structured_content
    return data


def module_class(
    module_id: str, tools: Sequence[MappedTool], server: mcp_types.Implementation | None
) -> type[ToolModule]:
    """A :class:`ToolModule` subclass serving ``tools``, each as a streaming capability."""
    namespace: dict[str, Any] = {
        "module_id": module_id,
        "name": (server.title or server.name) if server else module_id,
        "version": (server.version if server and server.version else "0.1.0"),
        "description": (
            server.description
            if server and server.description
            else f"The MCP server {server.name if server else module_id!r}, published with dai module mcp."
        ),
    }
    for i, tool in enumerate(tools):
        namespace[f"tool_{i}"] = _handler(tool, f"tool_{i}")
    return type(f"Mcp_{module_id.replace('-', '_')}", (ToolModule,), namespace)


def _handler(tool: MappedTool, method_name: str) -> Callable[..., AsyncIterator[Chunk]]:
    async def forward(self: ToolModule, **arguments: Any) -> AsyncIterator[Chunk]:
        async for chunk in self.forward(tool, arguments):
            yield chunk

    # The SDK finds a handler by its method's name: the attribute it is stored under.
    forward.__name__ = forward.__qualname__ = method_name
    return capability(
        tool.capability,
        tool.input_schema,
        tool.output_schema or CONTENT_SCHEMA,
        description=tool.description or f"The MCP tool {tool.tool!r}.",
    )(forward)
