"""What each stream's events are, for people: a decoder to readable JSON and the subject layout.

Adding a stream means adding one :class:`StreamCodec` here. A stream without one is still
readable: JSON events are shown as they are and anything else as base64.

    MCP        protobuf ``MCPMessage``; a JSON payload (and error details) shown as JSON
    REGISTRY   msgspec JSON events of every version, upcast to the current one
    IDENTITY, BILLING   msgspec JSON events
    USAGE   JSON as stored
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from democratic_ai.contracts import JSON, billing_events, decode, identity_events, registry_events, subjects
from democratic_ai.contracts.streams import BILLING_STREAM, IDENTITY_STREAM, MCP_STREAM, REGISTRY_STREAM, USAGE_STREAM

__all__ = ["CODECS", "FilterError", "StreamCodec", "codec_for"]

_json_decode = msgspec.json.Decoder().decode

Decoded = tuple[str, Any]  # (event type, a value msgspec can encode as JSON)


class FilterError(ValueError):
    """A tenant or capability filter that the stream's subjects cannot express."""


def _undecodable(data: bytes, reason: str) -> Decoded:
    return "", {"undecodable": reason, "data_base64": base64.b64encode(data).decode()}


def _decode_json(data: bytes) -> Decoded:
    try:
        value = _json_decode(data)
    except msgspec.DecodeError:
        return _undecodable(data, "not JSON")
    kind = value.get("type", "") if isinstance(value, dict) else ""
    return (kind if isinstance(kind, str) else ""), value


def _json_bytes(document: dict[str, Any], field: str, raw: bytes) -> None:
    """Show the bytes field ``field`` as the JSON it holds, or as ``<field>_base64``."""
    try:
        document[field] = _json_decode(raw)
    except msgspec.DecodeError:
        document.pop(field, None)
        document[f"{field}_base64"] = base64.b64encode(raw).decode()


def _decode_mcp(data: bytes) -> Decoded:
    try:
        message = decode(data)
    except DecodeError:
        return _undecodable(data, "not an MCPMessage")
    document = MessageToDict(message, preserving_proto_field_name=True)
    if message.payload:
        if (message.content_type or JSON) == JSON:
            _json_bytes(document, "payload", message.payload)
        else:
            document.pop("payload", None)
            document["payload_base64"] = base64.b64encode(message.payload).decode()
    if message.error.details:
        _json_bytes(document["error"], "details", message.error.details)
    return document.get("type", "MESSAGE_TYPE_UNSPECIFIED"), document


def _typed(decoder: Callable[[bytes], msgspec.Struct]) -> Callable[[bytes], Decoded]:
    def decode_typed(data: bytes) -> Decoded:
        try:
            event = decoder(data)
        except msgspec.ValidationError as exc:
            kind, value = _decode_json(data)
            return kind, {"invalid": str(exc), "event": value}
        except msgspec.DecodeError:
            return _undecodable(data, "not JSON")
        return event.__struct_config__.tag or "", event

    return decode_typed


def _mcp_filter(tenant: str | None, capability: str | None) -> str:
    return subjects.records(tenant or "*", capability or ">")


def _tenant_first(family: str, stream: str) -> Callable[[str | None, str | None], str]:
    def subject_filter(tenant: str | None, capability: str | None) -> str:
        if capability:
            raise FilterError(f"{stream} subjects carry no capability; filter with --tenant or --subject")
        return subjects.of_tenant(family, tenant or "*")

    return subject_filter


def _registry_filter(tenant: str | None, capability: str | None) -> str:
    raise FilterError(
        "REGISTRY subjects name modules, not tenants or capabilities; use --subject 'registry.<module>.>'"
    )


@dataclass(frozen=True, slots=True)
class StreamCodec:
    stream: str
    decode: Callable[[bytes], Decoded]
    # The subject filter selecting a tenant and/or a capability (at least one is given).
    subject_filter: Callable[[str | None, str | None], str]

    def filter_for(self, tenant: str | None, capability: str | None) -> str | None:
        """The subject filter of ``--tenant`` / ``--capability``, validated; ``None`` when neither is given."""
        if tenant is None and capability is None:
            return None
        try:
            if tenant is not None:
                subjects.validate_token(tenant, "tenant")
            if capability is not None:
                subjects.validate_capability(capability)
        except subjects.InvalidSubjectToken as exc:
            raise FilterError(str(exc)) from None
        return self.subject_filter(tenant, capability)


CODECS: dict[str, StreamCodec] = {
    codec.stream: codec
    for codec in (
        StreamCodec(MCP_STREAM, _decode_mcp, _mcp_filter),
        StreamCodec(REGISTRY_STREAM, _typed(registry_events.decode_event), _registry_filter),
        StreamCodec(
            IDENTITY_STREAM, _typed(identity_events.decode_event), _tenant_first(subjects.ALL_IDENTITY, IDENTITY_STREAM)
        ),
        StreamCodec(USAGE_STREAM, _decode_json, _tenant_first(subjects.ALL_USAGE, USAGE_STREAM)),
        StreamCodec(
            BILLING_STREAM, _typed(billing_events.decode_event), _tenant_first(subjects.ALL_BILLING, BILLING_STREAM)
        ),
    )
}


def codec_for(stream: str) -> StreamCodec:
    """The stream's codec; an unknown stream is read as JSON and has no tenant layout."""
    return CODECS.get(stream) or StreamCodec(stream, _decode_json, _no_layout(stream))


def _no_layout(stream: str) -> Callable[[str | None, str | None], str]:
    def subject_filter(tenant: str | None, capability: str | None) -> str:
        raise FilterError(f"the subjects of {stream} have no known tenant or capability layout; use --subject")

    return subject_filter
