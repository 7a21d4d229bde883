"""A handler's parameters against its input schema, checked when a module is constructed.

A mismatch would otherwise surface only at call time, as a ``VALIDATION_FAILED`` that blames a
caller who sent exactly what the published schema asks for. So :class:`~democratic_ai.sdk.Module`
refuses to exist, with a :class:`~democratic_ai.sdk.SchemaError` naming the module, the capability,
the parameter and the schema property, when:

- the schema requires a property the handler has no parameter for (and no ``**kwargs``);
- the schema declares a property the handler has no parameter for (a caller sending it would be
  told "unexpected field");
- the handler has a parameter without a default that the schema does not declare, or declares
  but does not require (a caller leaving it out would be told "required field is missing");
- a handler taking keyword arguments has a schema whose type is not ``object``;
- a handler taking a msgspec Struct or pydantic model cannot be called with that one value (no
  positional parameter, or further parameters without defaults), or annotates it with another type.

The check reads the top level of a JSON Schema only, and where composition (``allOf``, ``anyOf``,
``$ref``, ``if``/``then``…) makes the answer uncertain it assumes the best of the schema: a false
alarm would stop a correct module from starting.

Why at construction rather than at class definition: that is where the SDK already collects a
class's capabilities (and refuses a duplicate action or a missing ``module_id``), it sees the final
class with every override, and it still comes before ``dai module run`` connects to anything.
"""

from __future__ import annotations

import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any

from .capability import CapabilityDefinition
from .errors import SchemaError

__all__ = ["check_handler"]

# Top-level keywords under which more properties may be declared or required than "properties"
# and "required" say: the check then gives the schema the benefit of the doubt.
_DECLARING = ("allOf", "anyOf", "oneOf", "$ref", "if", "then", "else", "dependentSchemas", "dependencies")
_REQUIRING = ("anyOf", "oneOf", "$ref", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies")


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a JSON Schema says about the properties of the object it accepts."""

    declared: frozenset[str]
    patterns: tuple[str, ...]
    required: frozenset[str]
    open: bool  # composition may declare properties this shape does not list
    may_require: bool  # composition may require properties this shape does not list

    def declares(self, name: str) -> bool:
        return self.open or name in self.declared or any(_search(p, name) for p in self.patterns)


def _search(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return True  # a pattern Python cannot read may well match: assume the best


def _shape(schema: dict[str, Any]) -> _Shape:
    declared = set(schema.get("properties") or {})
    required = set(schema.get("required") or [])
    patterns = list(schema.get("patternProperties") or {})
    for branch in schema.get("allOf") or []:  # every branch applies: its properties and requirements count
        if isinstance(branch, dict):
            inner = _shape(branch)
            declared |= inner.declared
            required |= inner.required
            patterns.extend(inner.patterns)
    return _Shape(
        declared=frozenset(declared),
        patterns=tuple(patterns),
        required=frozenset(required),
        open=any(k in schema for k in _DECLARING if k != "allOf")
        or any(isinstance(b, dict) and _shape(b).open for b in schema.get("allOf") or []),
        may_require=any(k in schema for k in _REQUIRING),
    )


def _takes_objects(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind is None:
        return True
    return kind == "object" or (isinstance(kind, list) and "object" in kind)


def check_handler(module: type[Any], definition: CapabilityDefinition) -> None:
    """Raise :class:`SchemaError` when ``definition``'s handler cannot take what its input schema accepts."""
    method = getattr(module, definition.method_name)
    where = (
        f"{module.__name__} (module {module.module_id!r}), capability {definition.action!r}:"
        f" {module.__name__}.{definition.method_name}{_signature(method)}"
    )
    if definition.takes_model:
        _check_model_handler(where, method, definition)
        return
    schema = definition.input.json_schema
    if not _takes_objects(schema):
        raise SchemaError(
            f"{where} takes the input's fields as keyword arguments, but its input schema accepts"
            f" {schema.get('type')!r}, not an object."
        )
    shape = _shape(schema)
    receives = definition.parameters
    if not definition.takes_any_keyword:
        for name in sorted(shape.required):
            if name not in receives:
                raise SchemaError(
                    f"{where} has no parameter {name!r}, but the input schema requires property"
                    f" {name!r}: every valid call would fail. Rename the parameter or the property."
                )
        for name in sorted(shape.declared):
            if name not in receives:
                raise SchemaError(
                    f"{where} has no parameter {name!r}, but the input schema declares property"
                    f" {name!r}: a call that sends it would fail. Add the parameter (or **kwargs),"
                    " or drop the property."
                )
    for name in sorted(definition.required):
        if not shape.declares(name):
            raise SchemaError(
                f"{where} needs parameter {name!r}, but the input schema has no property {name!r}:"
                " callers cannot know to send it. Declare it (and require it), or give the"
                " parameter a default."
            )
        if name not in shape.required and not shape.may_require:
            raise SchemaError(
                f"{where} needs parameter {name!r}, but the input schema does not require property"
                f' {name!r}: a call that leaves it out would fail. Add {name!r} to "required",'
                " or give the parameter a default."
            )


def _check_model_handler(where: str, method: Any, definition: CapabilityDefinition) -> None:
    """A handler given one validated instance: callable with it alone, and annotated with its type if at all."""
    params = list(inspect.signature(method).parameters.values())[1:]  # drop self
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    model = getattr(definition.input, "model", None)
    model_name = getattr(model, "__name__", "the model")
    if not positional:
        raise SchemaError(
            f"{where} has no parameter for the {model_name} instance its input schema"
            " describes: add one, e.g. (self, request)."
        )
    first, rest = positional[0], [p for p in params if p is not positional[0]]
    for extra in rest:
        if extra.default is extra.empty and extra.kind not in (extra.VAR_POSITIONAL, extra.VAR_KEYWORD):
            raise SchemaError(
                f"{where} receives one {model_name} instance, but also needs parameter {extra.name!r},"
                " which no call can supply: give it a default or remove it."
            )
    try:
        hint = typing.get_type_hints(method).get(first.name)
    except Exception:  # an annotation that cannot be resolved here: nothing to compare
        return
    if isinstance(hint, type) and isinstance(model, type) and not issubclass(model, hint):
        raise SchemaError(
            f"{where} annotates parameter {first.name!r} as {hint.__name__}, but the input schema"
            f" is {model_name}: the handler receives a {model_name} instance."
        )


def _signature(method: Any) -> str:
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):
        return "(…)"
    return str(signature.replace(return_annotation=inspect.Signature.empty))
