"""One call of a capability handler: its input checked, the handler started, its answers built.

Shared by the two ways a module serves a call — answered once (request/reply) or streamed —
so both check input and output the same way and turn the same failures into the same errors.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from democratic_ai.contracts import ErrorCode, MCPMessage, error_reply, reply

from .capability import CapabilityDefinition
from .errors import CallError

__all__ = ["Invocation"]

log = logging.getLogger(__name__)

_encode_json = msgspec.json.Encoder().encode
_decode_json = msgspec.json.Decoder().decode


class Invocation:
    """The call of ``definition`` that ``request`` asks for, served by module ``module_id``."""

    __slots__ = ("_payload", "definition", "input_bytes", "module_id", "request")

    def __init__(self, module_id: str, definition: CapabilityDefinition, request: MCPMessage) -> None:
        self.module_id = module_id
        self.definition = definition
        self.request = request
        # Read once: protobuf copies a bytes field on every read (about 37 µs per MiB).
        self._payload = request.payload
        self.input_bytes = len(self._payload)  # the size of the input, metered with the answer

    def start(self, handler: Callable[..., Any]) -> tuple[Any, MCPMessage | None]:
        """Check the input and call ``handler``: its coroutine or async generator, not yet run, or the ERROR."""
        definition = self.definition
        limit = definition.max_input_bytes
        data = self._payload
        if limit is not None and self.input_bytes > limit:
            # Calls come over NATS too, not only through the gateway that checks the same limit.
            return None, self.error(
                ErrorCode.PAYLOAD_TOO_LARGE, f"the input may be at most {limit} bytes", where="input", max_bytes=limit
            )
        try:
            payload = _decode_json(data) if data else {}
        except msgspec.DecodeError as exc:
            return None, self.error(
                ErrorCode.VALIDATION_FAILED, f"the payload is not valid JSON: {exc}", where="input", path="$"
            )
        value, invalid = definition.input.check(payload)
        if invalid is not None:
            return None, self.error(
                ErrorCode.VALIDATION_FAILED,
                f"input {invalid.path}: {invalid.message}",
                where="input",
                path=invalid.path,
                validator=invalid.validator,
            )
        if definition.takes_model:
            return self._called(handler, (value,), {})
        kwargs, problem = _keyword_arguments(definition, value)
        if problem is not None:
            return None, self.error(ErrorCode.VALIDATION_FAILED, problem[1], where="input", path=problem[0])
        return self._called(handler, (), kwargs)

    def _called(
        self, handler: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, MCPMessage | None]:
        """``handler(*args, **kwargs)``, or the ERROR when calling it raises at once (arguments that
        do not bind, a handler that is not ``async``): the caller gets an answer, not a timeout."""
        try:
            return handler(*args, **kwargs), None
        except Exception as exc:
            return None, self.failure(exc)

    def output(self, value: Any) -> tuple[bytes, MCPMessage | None]:
        """``value`` as JSON if it fits the output schema, else the ERROR saying where it does not."""
        out = self.definition.output.dump(value)
        _, invalid = self.definition.output.check(out)
        if invalid is not None:
            log.error("capability %s returned output that breaks its schema: %s", self.definition.action, invalid)
            return b"", self.error(
                ErrorCode.VALIDATION_FAILED,
                f"output {invalid.path}: {invalid.message}",
                where="output",
                path=invalid.path,
                validator=invalid.validator,
            )
        return _encode_json(out), None

    async def answer(self, result: Awaitable[Any]) -> MCPMessage:
        """Await the handler's ``result``: the RESPONSE, or the ERROR it raised or its output earned."""
        try:
            payload, invalid = self.output(await result)
        except Exception as exc:
            # A handler's bug must not take the module down: answer, log, keep serving.
            return self.failure(exc)
        return reply(self.request, payload, source_module_id=self.module_id) if invalid is None else invalid

    def failure(self, exc: Exception) -> MCPMessage:
        """The ERROR for an exception of the handler; anything but a CallError is logged as a bug."""
        if isinstance(exc, CallError):
            code = ErrorCode(exc.code) if exc.code in ErrorCode.__members__ else ErrorCode.MODULE_ERROR
            return self.error(code, exc.message, **exc.details)
        log.error("capability %s failed on call %s", self.definition.action, self.request.correlation_id, exc_info=exc)
        return self.error(
            ErrorCode.MODULE_ERROR,
            f"the module {self.module_id!r} failed while handling {self.definition.action!r}",
        )

    def error(self, code: ErrorCode, text: str, **details: Any) -> MCPMessage:
        return error_reply(self.request, code, text, source_module_id=self.module_id, details=details)


def _keyword_arguments(definition: CapabilityDefinition, value: Any) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """Map a JSON object onto the handler's parameters, or say which field does not fit."""
    if not isinstance(value, dict):
        return {}, ("$", "the input must be a JSON object")
    if not definition.takes_any_keyword:
        for key in value:
            if key not in definition.parameters:
                return {}, (f"$.{key}", f"input $.{key}: unexpected field")
    for name in definition.required:
        if name not in value:
            return {}, (f"$.{name}", f"input $.{name}: required field is missing")
    return value, None
