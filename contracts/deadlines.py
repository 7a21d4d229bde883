"""A call's deadline, hop by hop: each process keeps its own, on its monotonic clock.

The clocks of two machines may disagree by seconds, so no absolute time crosses the bus as a
deadline (a gateway 30 s behind would make every module drop every call as expired). What
travels is the time a call has *left*: the sender sets the NATS header ``Dai-Remaining-Ms``
just before it publishes, and the receiver adds it to the monotonic time the message arrived
(:func:`received`). A message without the header — from an older sender — gets its whole
``ttl`` from its arrival. The time the call spent on the wire is not counted; it is well
under a millisecond on one NATS cluster, and counting it would need the very clock agreement
this avoids.

The request's ``timestamp`` stays what it was: when the request was made, for the record. Only
the process that made the request reads it as a deadline (:func:`made_here`), against its own
clock.

Deadlines here are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from .headers import DAI_REMAINING_MS
from .mcp_v2_pb2 import MCPMessage

__all__ = ["made_here", "received", "remaining_header"]


def made_here(request: MCPMessage) -> float | None:
    """The deadline of a request this process made (``new_request`` stamped it with this
    process's clock): its ttl counted from its timestamp. None when it has no ttl."""
    ttl = request.ttl
    if ttl <= 0:
        return None
    now = time.monotonic()
    if not request.HasField("timestamp"):
        return now + ttl
    stamp = request.timestamp
    age = time.time() - (stamp.seconds + stamp.nanos / 1e9)
    return now + ttl - max(0.0, age)  # a clock stepped back since does not lengthen the ttl


def received(request: MCPMessage, headers: Mapping[str, str] | None, arrived: float) -> float | None:
    """The deadline of a request that arrived at monotonic time ``arrived``: what its sender
    said was left, or else its whole ttl. None when it has neither."""
    left = headers.get(DAI_REMAINING_MS) if headers else None
    if left is not None:
        try:
            return arrived + int(left) / 1000
        except ValueError:
            pass  # unreadable: fall back to the ttl
    return arrived + request.ttl if request.ttl > 0 else None


def remaining_header(deadline: float) -> str:
    """The header value for a message published now: whole milliseconds left (rounded down,
    so no hop ever waits longer than its caller)."""
    return str(math.floor((deadline - time.monotonic()) * 1000))
