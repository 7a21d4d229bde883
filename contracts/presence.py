"""Presence messages: a module instance says it is alive, and says when it leaves.

They travel on core NATS (``hub.heartbeat.<module>``, ``hub.leave.<module>``) and are never
stored: presence is a fact about now, not history. What a module *offers* is history and
lives in the REGISTRY stream.
"""

from __future__ import annotations

import msgspec

__all__ = ["Heartbeat", "Leave", "decode_heartbeat", "decode_leave", "encode"]


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    module_id: str
    instance_id: str
    capabilities: tuple[str, ...]
    interval: float  # seconds until the next heartbeat; three missed ones mean gone
    in_flight: int = 0


class Leave(msgspec.Struct, frozen=True, kw_only=True):
    module_id: str
    instance_id: str


encode = msgspec.json.Encoder().encode
decode_heartbeat = msgspec.json.Decoder(Heartbeat).decode
decode_leave = msgspec.json.Decoder(Leave).decode
