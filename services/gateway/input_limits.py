"""One body limit rule for calls, over HTTP and the WebSocket alike.

A capability may declare the largest input it takes (``@capability(..., max_input_bytes=...)``,
carried in its manifest to the registry). A call's input may be that large — or, for a
capability that declares nothing, ``max_body_bytes`` (1 MiB) — but never more than the
gateway's ceiling: ``body_ceiling_bytes`` (``DAI_MAX_BODY_BYTES``), itself never more than one
NATS message can carry around the call's envelope (the server's ``max_payload``, from its INFO).
An input over its limit answers ``PAYLOAD_TOO_LARGE`` naming the limit (413 over HTTP, an
``ERROR`` frame over the WebSocket). Every other body of the gateway stays within
``max_body_bytes``, which aiohttp enforces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web

from democratic_ai.contracts import ErrorCode
from democratic_ai.hub import RegistryIndex

from .errors import ApiError

__all__ = ["ENVELOPE_BYTES", "InputLimits", "effective_ceiling", "read_input"]

log = logging.getLogger(__name__)

# What a NATS message holds besides a call's input: the MCP envelope (ids, context, headers)
# and the NATS headers (trace context, deadlines). Generous: an envelope is well under 4 KiB.
ENVELOPE_BYTES = 64 * 1024


def effective_ceiling(configured: int | None, max_payload: int) -> int:
    """The ceiling to enforce: ``configured`` (``None``: no wish), lowered to what a NATS message
    of ``max_payload`` bytes carries as a call's input."""
    carried = max_payload - ENVELOPE_BYTES
    if configured is None:
        return carried
    if configured > carried:
        log.warning(
            "the body ceiling of %d bytes is more than the NATS server carries (max_payload %d, less"
            " %d for the envelope); using %d",
            configured,
            max_payload,
            ENVELOPE_BYTES,
            carried,
        )
        return carried
    return configured


@dataclass(frozen=True, slots=True)
class InputLimits:
    default: int  # the limit of a capability that declares none
    ceiling: int  # no capability's limit is above it
    registry: RegistryIndex

    def of(self, action: str, module_id: str = "") -> int:
        """The limit of a call of ``action`` (routed to ``module_id``, when it names one)."""
        return min(self.registry.max_input_bytes(action, module_id, default=self.default), self.ceiling)

    def declared(self, declared: int | None) -> int:
        """The limit of a capability that declares ``declared`` (``None``: nothing)."""
        return min(declared or self.default, self.ceiling)

    def check(self, action: str, size: int, limit: int) -> None:
        """A PAYLOAD_TOO_LARGE naming ``limit`` when an input of ``size`` bytes is over it."""
        if size > limit:
            raise ApiError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"the input of {action!r} may be at most {limit} bytes",
                {"max_bytes": limit, "capability": action},
            )


async def read_input(request: web.Request, limits: InputLimits, action: str, module_id: str = "") -> bytes:
    """The body of a call, read only as far as its limit: a 413 as soon as it is known to be over
    it (by ``Content-Length``, or while reading — the size counts after decompression)."""
    limit = limits.of(action, module_id)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if request.content_length is not None and encoding in ("", "identity"):
        limits.check(action, request.content_length, limit)  # compressed, it might inflate to less
    body = bytearray()
    while chunk := await request.content.readany():
        body.extend(chunk)
        limits.check(action, len(body), limit)
    return bytes(body)
