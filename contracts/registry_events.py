"""Events of the REGISTRY stream: which modules exist and what they offer.

Subjects are ``registry.<module>.registered`` and ``registry.<module>.updated``. Events are
JSON (readable with ``nats stream view REGISTRY``) decoded by one typed decoder that ignores
unknown fields, so an older reader survives a newer writer.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import msgspec

__all__ = [
    "CapabilitySpec",
    "ModuleManifest",
    "ModuleRegistered",
    "ModuleUpdated",
    "RegistryEvent",
    "decode_event",
    "encode_event",
]


class CapabilitySpec(msgspec.Struct, frozen=True, kw_only=True):
    action: str
    description: str = ""
    input_schema: dict[str, Any] = msgspec.field(default_factory=dict)
    output_schema: dict[str, Any] = msgspec.field(default_factory=dict)
    streaming: bool = False


class ModuleManifest(msgspec.Struct, frozen=True, kw_only=True):
    """What a module announces: its identity and its capabilities."""

    module_id: str
    name: str = ""
    version: str = "0.0.0"
    description: str = ""
    capabilities: tuple[CapabilitySpec, ...] = ()

    def digest(self) -> str:
        """A stable hash of the manifest: equal manifests give equal digests."""
        return hashlib.sha256(msgspec.json.encode(self, order="sorted")).hexdigest()


class ModuleRegistered(msgspec.Struct, frozen=True, kw_only=True, tag="module.registered", tag_field="type"):
    v: int = 1
    manifest: ModuleManifest
    digest: str
    at: datetime


class ModuleUpdated(msgspec.Struct, frozen=True, kw_only=True, tag="module.updated", tag_field="type"):
    v: int = 1
    manifest: ModuleManifest
    digest: str
    at: datetime


RegistryEvent = ModuleRegistered | ModuleUpdated

_decoder = msgspec.json.Decoder(RegistryEvent)
_encoder = msgspec.json.Encoder()


def encode_event(event: RegistryEvent) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> RegistryEvent:
    """Decode a REGISTRY event; raises ``msgspec.ValidationError`` for a malformed one."""
    return _decoder.decode(data)
