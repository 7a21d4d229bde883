"""Presence messages: a module instance says it is alive, and says when it leaves.

They travel on core NATS (``hub.heartbeat.<module>``, ``hub.leave.<module>``) and are never
stored: presence is a fact about now, not history. What a module *offers* is history and
lives in the REGISTRY stream.

Heartbeats also tell a caller that the instance running its call died: an instance that takes a
call names itself in an ACCEPTED answer (at once for a streamed call; after
:data:`ACCEPT_AFTER` seconds for a plain call still running, if its caller asked with the MCP
header :data:`~.headers.MCP_ACCEPT_HELD`), and the caller fails the call with
``MODULE_UNAVAILABLE`` once that instance has missed three heartbeats. So an instance that
leaves keeps heartbeating, with ``leaving`` set, until the calls it still runs are finished:
it is no longer listed, but it is not dead.
"""

from __future__ import annotations

import msgspec

__all__ = ["ACCEPT_AFTER", "MISSED_HEARTBEATS", "Heartbeat", "Leave", "decode_heartbeat", "decode_leave", "encode"]

MISSED_HEARTBEATS = 3  # heartbeats in a row an instance may miss before it counts as dead
# Seconds a module may take to answer a plain call before it says ACCEPTED, naming its instance.
# Answers faster than this cost the caller nothing extra; a slower call costs one message more.
ACCEPT_AFTER = 0.25
# A caller that reads that ACCEPTED says so with the MCP header MCP_ACCEPT_HELD (any value).
# Without it the module sends the answer alone: a caller such as ``nats req`` takes the first
# message as the answer.


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    module_id: str
    instance_id: str
    capabilities: tuple[str, ...]
    interval: float  # seconds until the next heartbeat; three missed ones mean gone
    in_flight: int = 0
    leaving: bool = False  # it said Leave and serves no new calls, but still finishes the ones it has


class Leave(msgspec.Struct, frozen=True, kw_only=True):
    module_id: str
    instance_id: str


encode = msgspec.json.Encoder().encode
decode_heartbeat = msgspec.json.Decoder(Heartbeat).decode
decode_leave = msgspec.json.Decoder(Leave).decode
