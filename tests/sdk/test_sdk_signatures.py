"""A handler whose parameters disagree with its input schema fails when the module is constructed,
with an error naming the module, the capability, the parameter and the property; and a call that
leaves out a required field is told which field (``$.text``), whatever kind of schema it has."""

from __future__ import annotations

from typing import Any

import msgspec
import pydantic
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.sdk import CallError, Client, Module, SchemaError, capability

from support.names import unique

TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


class Note(msgspec.Struct):
    text: str


class Letter(pydantic.BaseModel):
    text: str


def build(schema: Any, handler: Any) -> type[Module]:
    """A module class ``Probe`` (id ``probe``) serving ``handler`` as ``test.probe``."""
    return type("Probe", (Module,), {"module_id": "probe", handler.__name__: capability("test.probe", schema)(handler)})


async def txt(self: Module, txt: str) -> dict:
    return {}


async def text_and_mood(self: Module, text: str, mood: str) -> dict:
    return {}


async def text_only(self: Module, text: str) -> dict:
    return {}


async def nothing(self: Module) -> dict:
    return {}


async def note_and_more(self: Module, note: Note, extra: int) -> dict:
    return {}


async def letter_as_note(self: Module, letter: Note) -> dict:
    return {}


@pytest.mark.parametrize(
    ("schema", "handler", "words"),
    [
        # the schema requires text, the handler takes txt: every valid call would fail
        (TEXT, txt, ["requires property 'text'", "no parameter 'text'"]),
        # a parameter without default the schema does not declare: no caller knows to send it
        (TEXT, text_and_mood, ["needs parameter 'mood'", "no property 'mood'"]),
        (None, text_only, ["needs parameter 'text'", "no property 'text'"]),
        # declared but not required, while the handler cannot do without it
        (
            {"type": "object", "properties": {"text": {"type": "string"}}},
            text_only,
            ["needs parameter 'text'", "does not require property 'text'"],
        ),
        # declared, but the handler has nowhere to put it
        (
            {"type": "object", "properties": {"text": {"type": "string"}}},
            nothing,
            ["no parameter 'text'", "declares property 'text'"],
        ),
        # keyword arguments from a schema that is not an object
        ({"type": "string"}, nothing, ["'string', not an object"]),
        # a model handler: one value, nothing else it cannot do without, and of the schema's type
        (Note, nothing, ["no parameter for the Note instance"]),
        (Note, note_and_more, ["needs parameter 'extra'"]),
        (Letter, letter_as_note, ["annotates parameter 'letter' as Note", "input schema is Letter"]),
    ],
)
def test_a_handler_that_disagrees_with_its_schema_fails_at_construction(
    schema: Any, handler: Any, words: list[str]
) -> None:
    probe = build(schema, handler)  # defining the class is fine …
    with pytest.raises(SchemaError) as refused:
        probe()  # … constructing it is not
    message = str(refused.value)
    assert "module 'probe'" in message and "capability 'test.probe'" in message, message
    assert f"Probe.{handler.__name__}(self" in message, message
    for word in words:
        assert word in message, message


async def with_default(self: Module, text: str, shout: bool = False) -> dict:
    return {}


async def any_keyword(self: Module, **fields: Any) -> dict:
    return {}


async def a_note(self: Module, note: Note) -> dict:
    return {}


async def a_letter(self: Module, letter: Letter, verbose: bool = False) -> dict:
    return {}


@pytest.mark.parametrize(
    ("schema", "handler"),
    [
        (TEXT, text_only),
        (TEXT, with_default),  # an optional parameter may go undeclared
        ({"type": "object", "properties": {"text": {}, "shout": {}}, "required": ["text"]}, with_default),
        ({"type": "object", "patternProperties": {"^te": {"type": "string"}}, "required": ["text"]}, text_only),
        (TEXT, any_keyword),
        ({"type": "object"}, any_keyword),
        (None, nothing),
        # composition may declare and require what the top level does not say: no false alarm
        ({"allOf": [TEXT]}, text_only),
        ({"type": "object", "anyOf": [TEXT, {"properties": {"text": {}}, "required": ["text"]}]}, text_only),
        ({"type": "object", "if": {"required": ["a"]}, "then": TEXT}, with_default),
        (Note, a_note),
        (Letter, a_letter),
    ],
)
def test_a_handler_that_fits_its_schema_constructs(schema: Any, handler: Any) -> None:
    assert "test.probe" in build(schema, handler)().capabilities


class Strict(Module):
    """One required field ``text``, with each kind of schema."""

    module_id = "strict-test"

    @capability("strict.dict", TEXT)
    async def by_dict(self, text: str) -> dict:
        return {"text": text}

    @capability("strict.fast", {**TEXT, "properties": {"text": {"type": "string", "minLength": 1}}})
    async def by_fast_check(self, text: str) -> dict:
        return {"text": text}

    @capability("strict.struct", Note)
    async def by_struct(self, note: Note) -> dict:
        return {"text": note.text}

    @capability("strict.model", Letter)
    async def by_model(self, letter: Letter) -> dict:
        return {"text": letter.text}


async def test_a_missing_required_field_is_reported_at_its_path(nc: NATS) -> None:
    module = Strict()
    await module.start(nc)
    client = Client(nc, tenant=unique("t"))
    try:
        for action in ("strict.dict", "strict.fast", "strict.struct", "strict.model"):
            assert await client.call(action, {"text": "hi"}) == {"text": "hi"}
            with pytest.raises(CallError) as missing:
                await client.call(action, {})
            assert missing.value.code == "VALIDATION_FAILED", action
            assert missing.value.details["path"] == "$.text", (action, missing.value.details)
            assert missing.value.details["where"] == "input"
            assert "$.text" in missing.value.message, missing.value.message
    finally:
        await module.stop()
