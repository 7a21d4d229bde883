"""The audit metadata of a command: who sent it, from where, with what client."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from democratic_ai.contracts.envelope import Meta

from .inputs import header_text

__all__ = ["request_meta"]


def request_meta(request: web.Request, actor: str) -> Meta:
    """The :class:`Meta` of a command sent by ``actor``; the user agent is the client's, made storable."""
    return Meta(
        at=datetime.now(UTC), actor=actor, ip=request.remote or "", user_agent=header_text(request, "User-Agent")
    )
