"""Events of the IDENTITY stream (``iam.<tenant>.<aggregate>.<id>``).

For now the stream carries API keys; tenants, users and tokens join it with the identity
service. A key's secret never enters the log: only its SHA-256 (keys are 256 random bits,
so a fast hash is the right tool) and a visible prefix to recognise it.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

__all__ = ["ApiKeyIssued", "IdentityEvent", "decode_event", "encode_event"]


class ApiKeyIssued(msgspec.Struct, frozen=True, kw_only=True, tag="api_key.issued", tag_field="type"):
    v: int = 1
    key_id: str
    tenant_id: str
    prefix: str
    sha256: str
    role: str
    name: str = ""
    at: datetime


IdentityEvent = ApiKeyIssued

_decoder = msgspec.json.Decoder(IdentityEvent)
encode_event = msgspec.json.Encoder().encode


def decode_event(data: bytes) -> IdentityEvent:
    return _decoder.decode(data)
