"""Capability schemas: a JSON Schema dict, a msgspec Struct or a pydantic model.

Each becomes a :class:`Schema` that knows its JSON Schema (published in the registry) and
checks a decoded JSON value against it, reporting the JSON path of the first offending field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

import jsonschema
import msgspec
from jsonschema.exceptions import best_match

from .errors import SchemaError

__all__ = ["Invalid", "Schema", "to_schema"]


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a value does not match its schema."""

    path: str  # JSON path of the offending field, "$" for the value itself
    message: str
    validator: str = ""


class Schema(Protocol):
    json_schema: dict[str, Any]

    def check(self, value: Any) -> tuple[Any, Invalid | None]:
        """Return ``(value for the handler, None)`` or ``(None, why it is invalid)``."""
        ...

    def dump(self, value: Any) -> Any:
        """Turn a handler's return value into plain JSON-able data."""
        ...


class JsonSchema:
    def __init__(self, schema: dict[str, Any]) -> None:
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise SchemaError(f"invalid JSON Schema: {exc.message}") from exc
        self.json_schema = schema
        self._validator = jsonschema.validators.validator_for(schema)(schema)

    def check(self, value: Any) -> tuple[Any, Invalid | None]:
        if self._validator.is_valid(value):
            return value, None
        error = best_match(self._validator.iter_errors(value))
        return None, Invalid(path=error.json_path, message=error.message, validator=str(error.validator))

    def dump(self, value: Any) -> Any:
        return msgspec.to_builtins(value)


# msgspec says e.g. "Expected `str`, got `int` - at `$.text`".
_MSGSPEC_PATH = re.compile(r" - at `(?P<path>\$[^`]*)`$")
_MSGSPEC_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")


class StructSchema:
    def __init__(self, struct_type: type[msgspec.Struct]) -> None:
        self.json_schema = msgspec.json.schema(struct_type)
        self._type = struct_type

    def check(self, value: Any) -> tuple[Any, Invalid | None]:
        try:
            return msgspec.convert(value, self._type), None
        except msgspec.ValidationError as exc:
            text = str(exc)
            found = _MSGSPEC_PATH.search(text)
            path, message = (found["path"], text[: found.start()]) if found else ("$", text)
            missing = _MSGSPEC_MISSING.search(message)
            if missing:  # point at the field itself, as the other schema kinds do
                path = f"{path}.{missing['field']}"
            return None, Invalid(path=path, message=message)

    def dump(self, value: Any) -> Any:
        return msgspec.to_builtins(value)


class PydanticSchema:
    def __init__(self, model: type[Any]) -> None:
        self.json_schema = model.model_json_schema()
        self._model = model

    def check(self, value: Any) -> tuple[Any, Invalid | None]:
        import pydantic

        try:
            return self._model.model_validate(value), None
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
            return None, Invalid(path=path, message=first["msg"], validator=first["type"])

    def dump(self, value: Any) -> Any:
        if hasattr(value, "model_dump"):
            return value.model_dump(mode="json")
        return msgspec.to_builtins(value)


def to_schema(spec: dict[str, Any] | type | None) -> Schema:
    """Accept a JSON Schema dict, a msgspec Struct type or a pydantic model type."""
    if spec is None:
        return JsonSchema({})
    if isinstance(spec, dict):
        return JsonSchema(spec)
    if isinstance(spec, type) and issubclass(spec, msgspec.Struct):
        return StructSchema(spec)
    if isinstance(spec, type) and hasattr(spec, "model_json_schema") and hasattr(spec, "model_validate"):
        return PydanticSchema(spec)
    raise SchemaError(
        f"a schema must be a JSON Schema dict, a msgspec.Struct type or a pydantic model, not {spec!r}."
    )
