"""The audit metadata of a command: who sent it, from where, with what client."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from democratic_ai.contracts.identity_events import Meta

__all__ = ["request_meta"]

_USER_AGENT_LENGTH = 256


def _printable(text: str, length: int) -> str:
    """``text`` as every reader can store it: aiohttp keeps undecodable header bytes as lone
    surrogates, which no event can encode, and PostgreSQL refuses NUL."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")[:length]


def request_meta(request: web.Request, actor: str) -> Meta:
    """The :class:`Meta` of a command sent by ``actor``; the user agent is the client's, made storable."""
    return Meta(at=datetime.now(UTC), actor=actor, ip=request.remote or "",
                user_agent=_printable(request.headers.get("User-Agent", ""), _USER_AGENT_LENGTH))
