"""Authentication at the edge: every route but the health checks needs an API key.

The key comes as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>`` and is checked
against the in-memory :class:`ApiKeyIndex` — no database round trip per call. The WebSocket
endpoint alone may be opened without a key, because browsers cannot set headers on a WebSocket:
it then requires the key in the socket's first message (see :mod:`.websocket`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from democratic_ai.contracts import ErrorCode
from democratic_ai.services.identity import Principal

from .errors import ApiError
from .state import API_KEYS

__all__ = ["PRINCIPAL", "auth_middleware", "principal_of"]

PRINCIPAL = web.RequestKey("principal", Principal)
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
FIRST_MESSAGE_AUTH_PATHS = frozenset({"/v1/ws"})


def _credential(request: web.Request) -> str | None:
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    key = _credential(request)
    if key is None:
        if request.path in FIRST_MESSAGE_AUTH_PATHS:
            return await handler(request)
        raise ApiError(
            ErrorCode.UNAUTHENTICATED,
            "an API key is required: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
        )
    principal = request.app[API_KEYS].authenticate(key)
    if principal is None:
        raise ApiError(ErrorCode.UNAUTHENTICATED, "the API key is not valid")
    request[PRINCIPAL] = principal
    return await handler(request)


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]
