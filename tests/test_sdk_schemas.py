"""Capability schemas from a dict, a msgspec Struct or a pydantic model; the JSON path of what is wrong."""

from __future__ import annotations

import msgspec
import pydantic
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.sdk import CallError, Client, Module, SchemaError, capability
from democratic_ai.sdk.schema import to_schema

from conftest import unique


class Order(msgspec.Struct):
    item: str
    quantity: int


class Person(pydantic.BaseModel):
    name: str
    age: int = pydantic.Field(ge=0)


@pytest.mark.parametrize(
    ("spec", "bad", "path"),
    [
        ({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}}}, {"a": [1, "x"]}, "$.a[1]"),
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
    with pytest.raises(ValueError):
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
