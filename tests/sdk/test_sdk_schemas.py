"""Capability schemas from a dict, a msgspec Struct or a pydantic model; the JSON path of what is wrong."""

from __future__ import annotations

import json

import jsonschema
import msgspec
import pydantic
import pytest
from jsonschema.exceptions import best_match
from nats.aio.client import Client as NATS

from democratic_ai.sdk import CallError, Client, Module, SchemaError, capability
from democratic_ai.sdk.schema import _fast_check, to_schema

from support.names import unique


class Order(msgspec.Struct):
    item: str
    quantity: int


class Person(pydantic.BaseModel):
    name: str
    age: int = pydantic.Field(ge=0)


@pytest.mark.parametrize(
    ("spec", "bad", "path"),
    [
        (
            {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}}},
            {"a": [1, "x"]},
            "$.a[1]",
        ),
        (Order, {"item": "pen", "quantity": "two"}, "$.quantity"),
        (Person, {"name": "Ada", "age": -1}, "$.age"),
    ],
)
def test_invalid_values_name_their_path(spec: object, bad: object, path: str) -> None:
    schema = to_schema(spec)  # type: ignore[arg-type]
    assert schema.json_schema  # published in the registry
    value, invalid = schema.check(bad)
    assert value is None and invalid is not None
    assert invalid.path == path


def test_unusable_schemas_are_refused_early() -> None:
    with pytest.raises(SchemaError):
        to_schema({"type": "no-such-type"})
    with pytest.raises(SchemaError):
        to_schema(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is not a valid name"):
        capability("Not A Name")


class Shop(Module):
    module_id = "shop-test"

    @capability("shop.order", Order, {"type": "object", "required": ["total"]})
    async def order(self, order: Order) -> dict:
        return {"total": order.quantity * 3, "item": order.item}

    @capability("shop.greet", Person, Person)
    async def greet(self, person: Person) -> Person:
        return Person(name=person.name.upper(), age=person.age)

    @capability("shop.broken", {"type": "object"}, {"type": "object", "required": ["total"]})
    async def broken(self) -> dict:
        return {"wrong": 1}


async def test_models_reach_handlers_and_outputs_are_checked(nc: NATS) -> None:
    shop = Shop()
    await shop.start(nc)
    client = Client(nc, tenant=unique("t"))
    try:
        assert await client.call("shop.order", {"item": "pen", "quantity": 2}) == {"total": 6, "item": "pen"}
        assert await client.call("shop.greet", {"name": "ada", "age": 36}) == {"name": "ADA", "age": 36}
        with pytest.raises(CallError) as bad_input:
            await client.call("shop.order", {"item": "pen"})
        assert bad_input.value.code == "VALIDATION_FAILED"
        assert bad_input.value.details["path"] == "$.quantity"
        with pytest.raises(CallError) as extra:
            await client.call("shop.broken", {"surprise": 1})
        assert (extra.value.code, extra.value.details["path"]) == ("VALIDATION_FAILED", "$.surprise")
        with pytest.raises(CallError) as bad_output:
            await client.call("shop.broken", {})
        assert bad_output.value.code == "VALIDATION_FAILED"
        assert bad_output.value.details["where"] == "output"
    finally:
        await shop.stop()


# Schemas a module might declare, in the drafts jsonschema picks by "$schema" (none: 2020-12).
SCHEMAS: list[dict[str, object]] = [
    {},
    {"type": "object"},
    {"type": "object", "title": "anything", "format": "email"},
    {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}}},
    {
        "type": "object",
        "required": ["a"],
        "additionalProperties": False,
        "properties": {"a": {"type": ["integer", "null"]}},
    },
    {"type": "object", "patternProperties": {"^x": {"type": "number"}}, "additionalProperties": {"type": "string"}},
    {"type": "array", "uniqueItems": True},
    {"type": "array", "items": {"enum": [1, "a", None, False]}, "minItems": 1, "maxItems": 2},
    {"const": 1},
    {"const": [1]},
    {"type": "number", "minimum": 0, "exclusiveMaximum": 2, "multipleOf": 0.5},
    {"type": "integer", "maximum": 1},
    {"type": "string", "minLength": 1, "maxLength": 3, "pattern": "^[a-z]+$"},
    {"anyOf": [{"type": "string"}, {"type": "object", "minProperties": 2}]},
    {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 1}]},
    {"allOf": [{"type": "object"}, {"not": {"required": ["b"]}}]},
    {"if": {"type": "object", "required": ["a"]}, "then": {"required": ["b"]}, "else": {"type": "object"}},
    {"type": "array", "contains": {"type": "string"}},
    {"type": "object", "propertyNames": {"maxLength": 1}, "maxProperties": 2},
    {"$defs": {"n": {"type": "integer"}}, "type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}},
    {"$defs": {"n": {"type": "integer"}}, "properties": {"a": {"$ref": "#/$defs/n", "minimum": 5}}},
    {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": {"n": {"type": "integer"}},
        "properties": {"a": {"$ref": "#/definitions/n", "minimum": 5}},
    },
    {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer", "maximum": 1, "exclusiveMaximum": True},
    {"$schema": "http://json-schema.org/draft-06/schema#", "type": "array", "items": [{"type": "integer"}]},
    {"type": "object", "dependentRequired": {"a": ["b"]}},
    {"type": "array", "prefixItems": [{"type": "integer"}], "items": False},
    {"type": "object", "properties": {"a": {"type": "integer"}}, "unevaluatedProperties": False},
    {"type": "object", "dependencies": {"a": ["b"]}},
]
VALUES: list[object] = [
    None,
    True,
    False,
    0,
    1,
    1.0,
    1.5,
    -1,
    2**70,
    "",
    "a",
    "abc\n",
    "ABC",
    "abcd",
    [],
    [1],
    [1, 1.0],
    [1, True],
    [0, False],
    ["a", "b"],
    [[1], [True]],
    [None, "a"],
    {},
    {"a": 1},
    {"a": 5},
    {"a": "x"},
    {"a": [1, "x"]},
    {"a": None},
    {"b": 1},
    {"a": 1, "b": 2},
    {"x1": 1, "x2": "s"},
    {"x1": "s"},
    {"ab": 1},
    {"a": 1.0, "c": {"k": [1, 2]}},
]


@pytest.mark.parametrize("spec", SCHEMAS, ids=lambda s: json.dumps(s)[:60])
def test_fast_checks_agree_with_jsonschema(spec: dict[str, object]) -> None:
    """Whichever check a schema gets, it accepts what jsonschema accepts and names the same path."""
    reference = jsonschema.validators.validator_for(spec)(spec)
    schema = to_schema(spec)
    for value in VALUES:
        checked, invalid = schema.check(value)
        expected = best_match(reference.iter_errors(value))
        if expected is None:
            assert (checked, invalid) == (value, None), value
        else:
            assert checked is None and invalid is not None, value
            path = expected.json_path
            if expected.validator == "required":  # the missing property itself, not the object lacking it
                path += "." + expected.message.split("'")[1]
            assert (invalid.path, invalid.validator) == (path, str(expected.validator)), value


@pytest.mark.parametrize(
    ("spec", "fast"),
    [
        ({}, True),
        ({"type": "object"}, True),
        ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}, True),
        ({"$defs": {"n": {"type": "integer"}}, "properties": {"a": {"$ref": "#/$defs/n"}}}, True),
        ({"properties": {"a": {"$ref": "#/$defs/n", "minimum": 5}}, "$defs": {"n": {"type": "integer"}}}, False),
        ({"$ref": "https://example.com/schema.json"}, False),
        ({"type": "object", "unevaluatedProperties": False}, False),
        ({"$schema": "http://json-schema.org/draft-03/schema#", "type": "object", "properties": {}}, False),
    ],
)
def test_only_portable_schemas_get_a_fast_check(spec: dict[str, object], fast: bool) -> None:
    validator_class = jsonschema.validators.validator_for(spec)
    assert (_fast_check(spec, validator_class) is not None) is fast
