"""Events of the REGISTRY stream: which modules exist and what they offer.

Subjects are ``registry.<module>.registered`` and ``registry.<module>.updated``. Events are
JSON (readable with ``nats stream view REGISTRY``) decoded by one typed decoder that ignores
unknown fields, so an older reader survives a newer writer.

Every event carries its schema version ``v``; the log is never rewritten, so :func:`decode_event`
upcasts older versions on read, one step at a time (the family's :class:`~.envelope.Upcasters`):

    v1  ``digest`` is the bare SHA-256 hex of the manifest.
    v2  ``digest`` names its algorithm, ``sha256:<hex>`` (the OCI convention), so the hash can
        change later without a reader mistaking one algorithm's digest for another's.
        :func:`upcast_v1_v2` prefixes v1 digests, so a module registered under v1 and announced
        again under v2 compares equal and is not recorded twice.
    v3  a capability may declare ``max_input_bytes``, the largest input (JSON payload) it takes;
        the gateway's body limit for it follows (up to its ceiling). v2 capabilities declare none
        (:func:`upcast_v2_v3`), and a manifest whose capabilities declare none has the digest it
        had under v2, so upgrading announces nothing new.

A version newer than this reader knows is read as the current one (unknown fields ignored).
Fields carry the limits of the registry read model (:mod:`.fields`); a manifest outside them
is refused when a module announces it (``hub/registry.py``).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import msgspec

from .envelope import Upcasters
from .fields import Description, Id, Name, PositiveInt32, checked_encoder
from .streams import REGISTRY_STREAM

__all__ = [
    "VERSION",
    "CapabilitySpec",
    "ModuleManifest",
    "ModuleRegistered",
    "ModuleUpdated",
    "RegistryEvent",
    "decode_event",
    "encode_event",
    "upcast_v1_v2",
    "upcast_v2_v3",
]

VERSION = 3  # the schema version this module writes


class CapabilitySpec(msgspec.Struct, frozen=True, kw_only=True):
    action: Id
    description: Description = ""
    input_schema: dict[str, Any] = msgspec.field(default_factory=dict)
    output_schema: dict[str, Any] = msgspec.field(default_factory=dict)
    streaming: bool = False
    max_input_bytes: PositiveInt32 | None = None  # None: the gateway's default limit (1 MiB)


class ModuleManifest(msgspec.Struct, frozen=True, kw_only=True):
    """What a module announces: its identity and its capabilities."""

    module_id: Id
    name: Name = ""
    version: Id = "0.0.0"
    description: Description = ""
    capabilities: tuple[CapabilitySpec, ...] = ()

    def digest(self) -> str:
        """A stable hash of the manifest, ``sha256:<hex>``: equal manifests give equal digests."""
        document = msgspec.to_builtins(self, order="sorted")
        for spec in document["capabilities"]:
            if spec.get("max_input_bytes") is None:
                del spec["max_input_bytes"]  # as under v2: declaring nothing keeps a manifest's digest
        return "sha256:" + hashlib.sha256(msgspec.json.encode(document)).hexdigest()


class ModuleRegistered(msgspec.Struct, frozen=True, kw_only=True, tag="module.registered", tag_field="type"):
    v: int = VERSION
    manifest: ModuleManifest
    digest: str
    at: datetime


class ModuleUpdated(msgspec.Struct, frozen=True, kw_only=True, tag="module.updated", tag_field="type"):
    v: int = VERSION
    manifest: ModuleManifest
    digest: str
    at: datetime


RegistryEvent = ModuleRegistered | ModuleUpdated

_decoder = msgspec.json.Decoder(RegistryEvent)
_encode = checked_encoder(RegistryEvent)


def encode_event(event: RegistryEvent) -> bytes:
    """Encode ``event``; raises :class:`~.fields.EventRejected` when a field breaks its limits."""
    return _encode(event)


def upcast_v1_v2(event: RegistryEvent) -> RegistryEvent:
    """v1 digests were bare SHA-256 hex; v2 digests say ``sha256:``."""
    return msgspec.structs.replace(event, v=2, digest=f"sha256:{event.digest}")


def upcast_v2_v3(event: RegistryEvent) -> RegistryEvent:
    """v2 capabilities declared no input limit: decoded, ``max_input_bytes`` is already ``None``."""
    return msgspec.structs.replace(event, v=3)


# version → the upcaster that lifts an event of that version to the next one. v1 and v2 share
# their field names, so the typed decoder reads both; a version that renames fields would
# decode into a struct of its own before its upcaster runs.
_upcast: Upcasters[RegistryEvent] = Upcasters(REGISTRY_STREAM, VERSION, {1: upcast_v1_v2, 2: upcast_v2_v3})


def decode_event(data: bytes) -> RegistryEvent:
    """Decode a REGISTRY event of any version, upcast to :data:`VERSION`.

    Raises ``msgspec.ValidationError`` for a malformed event or a version that never existed.
    """
    return _upcast(_decoder.decode(data))
