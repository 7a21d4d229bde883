"""The ``@capability`` decorator: it marks a coroutine method as a capability, nothing more.

The method keeps working as a plain method; :class:`~democratic_ai.sdk.Module` finds the
marks when it starts and serves them. An ``async def`` containing ``yield`` is a streaming
capability: each yielded value becomes one STREAM_CHUNK (see :mod:`democratic_ai.sdk.streaming`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from democratic_ai.contracts.registry_events import CapabilitySpec
from democratic_ai.contracts.subjects import validate_capability

from .schema import Schema, to_schema

__all__ = ["CapabilityDefinition", "capability", "definitions_of"]

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__dai_capability__"


@dataclass(frozen=True, slots=True)
class CapabilityDefinition:
    action: str
    description: str
    input: Schema
    output: Schema
    method_name: str
    # How the handler takes its input: the validated model as one argument (schema is a type),
    # or the JSON object's fields as keyword arguments (schema is a dict).
    takes_model: bool
    parameters: frozenset[str]
    required: frozenset[str]
    takes_any_keyword: bool
    streaming: bool = False  # an async generator: each yielded value is one chunk
    max_input_bytes: int | None = None  # the largest JSON input taken; None: the platform's default

    def spec(self) -> CapabilitySpec:
        return CapabilitySpec(
            action=self.action,
            description=self.description,
            input_schema=self.input.json_schema,
            output_schema=self.output.json_schema,
            streaming=self.streaming,
            max_input_bytes=self.max_input_bytes,
        )


def capability(
    action: str,
    input_schema: dict[str, Any] | type | None = None,
    output_schema: dict[str, Any] | type | None = None,
    description: str = "",
    max_input_bytes: int | None = None,
) -> Callable[[F], F]:
    """Mark ``async def method(self, ...)`` as the handler of capability ``action``.

    With a dict schema the handler receives the input object's fields as keyword arguments
    (``async def summarize(self, text: str, max_length: int = 100)``); with a msgspec Struct or
    pydantic model it receives one validated instance. It returns a dict, Struct or model — or,
    as an async generator, yields them (or :class:`~democratic_ai.sdk.Chunk` objects with progress);
    ``output_schema`` then describes the data of one chunk.

    ``max_input_bytes`` is the largest input (the call's JSON, in bytes) the capability takes:
    the gateway accepts bodies that large for it — up to its ceiling — instead of its default of
    1 MiB, and the module refuses a larger input with ``PAYLOAD_TOO_LARGE``.
    """
    validate_capability(action)
    if max_input_bytes is not None and not (
        isinstance(max_input_bytes, int) and not isinstance(max_input_bytes, bool) and 1 <= max_input_bytes <= 2**31 - 1
    ):
        raise ValueError(f"capability {action!r}: max_input_bytes must be a whole number of bytes from 1 to 2**31-1.")
    input_ = to_schema(input_schema)
    output = to_schema(output_schema)

    def mark(method: F) -> F:
        streams = inspect.isasyncgenfunction(method)
        if not (streams or inspect.iscoroutinefunction(method)):
            raise TypeError(f"capability {action!r}: {method.__qualname__} must be an 'async def' method.")
        params = list(inspect.signature(method).parameters.values())[1:]  # drop self
        named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        definition = CapabilityDefinition(
            action=action,
            description=description or inspect.getdoc(method) or "",
            input=input_,
            output=output,
            method_name=method.__name__,
            takes_model=not isinstance(input_schema, dict) and input_schema is not None,
            parameters=frozenset(p.name for p in named),
            required=frozenset(p.name for p in named if p.default is p.empty),
            takes_any_keyword=any(p.kind is p.VAR_KEYWORD for p in params),
            streaming=streams,
            max_input_bytes=max_input_bytes,
        )
        setattr(method, _MARK, definition)
        return method

    return mark


def definitions_of(obj: object) -> dict[str, CapabilityDefinition]:
    """The capabilities an object's class declares, by action."""
    found: dict[str, CapabilityDefinition] = {}
    for name in dir(type(obj)):
        definition = getattr(getattr(type(obj), name), _MARK, None)
        if isinstance(definition, CapabilityDefinition):
            if definition.action in found:
                raise TypeError(f"capability {definition.action!r} is declared twice on {type(obj).__name__}.")
            found[definition.action] = definition
    return found
