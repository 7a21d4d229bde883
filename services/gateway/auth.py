"""Authentication at the edge, and the permission check every handler makes.

A credential comes as ``X-API-Key: <key>`` or ``Authorization: Bearer <key or access token>``
and is resolved against the in-memory identity index — no database round trip per call. The
WebSocket endpoint alone may be opened without one, because browsers cannot set headers on a
WebSocket: it then requires the credential in the socket's first message (see :mod:`.websocket`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from democratic_ai.contracts import ErrorCode, subjects
from democratic_ai.contracts.headers import HTTP_API_KEY
from democratic_ai.services.identity import Principal

from .errors import ApiError, bad_parameter
from .state import GATE

__all__ = [
    "PRINCIPAL",
    "STRIPE_WEBHOOK_PATH",
    "auth_middleware",
    "credential_of",
    "principal_of",
    "queried_tenant",
    "require",
    "require_tenant",
]

PRINCIPAL = web.RequestKey("principal", Principal)
# Stripe authenticates its webhook with a signature over the body, checked by the handler.
STRIPE_WEBHOOK_PATH = "/v1/billing/stripe/webhook"
PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/.well-known/jwks.json",
        "/v1/auth/login",
        "/v1/auth/refresh",
        "/openapi.json",
        STRIPE_WEBHOOK_PATH,
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    }
)
FIRST_MESSAGE_AUTH_PATHS = frozenset({"/v1/ws"})
# Authenticates on its own, to answer 401 with the Bearer challenge MCP clients follow (.mcp_http).
OWN_AUTH_PATHS = frozenset({"/mcp"})
# The front door and the console: its page and files are public (they hold no data; the pages
# call the API with a credential), and its session routes check their own (.console_routes).
CONSOLE_PATHS = frozenset({"/", "/console"})
CONSOLE_PREFIX = "/console/"


def credential_of(request: web.Request) -> str | None:
    """The API key or access token the request carries, if any."""
    key = request.headers.get(HTTP_API_KEY, "").strip()
    if key:
        return key
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    path = request.path
    if path in PUBLIC_PATHS or path in OWN_AUTH_PATHS or path in CONSOLE_PATHS or path.startswith(CONSOLE_PREFIX):
        return await handler(request)
    credential = credential_of(request)
    if credential is None:
        if request.path in FIRST_MESSAGE_AUTH_PATHS:
            return await handler(request)
        raise ApiError(
            ErrorCode.UNAUTHENTICATED,
            "a credential is required: send 'X-API-Key: <key>' or 'Authorization: Bearer <key or token>'",
        )
    request[PRINCIPAL] = request.app[GATE].authenticate(credential)
    return await handler(request)


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def require(request: web.Request, *permissions: str) -> Principal:
    """The caller, if it holds one of ``permissions``; otherwise 403."""
    principal = request[PRINCIPAL]
    if not any(principal.can(p) for p in permissions):
        raise ApiError(
            ErrorCode.FORBIDDEN, f"this needs the permission {' or '.join(permissions)}", {"needed": list(permissions)}
        )
    return principal


def require_tenant(request: web.Request, tenant_id: str) -> Principal:
    """The caller, if ``tenant_id`` is its own tenant (or it is a super admin).

    Another tenant's resources answer 404, as if they did not exist: a caller learns nothing
    about tenants it cannot see.
    """
    principal = request[PRINCIPAL]
    if principal.tenant_id != tenant_id and not principal.is_super_admin:
        raise ApiError(ErrorCode.NOT_FOUND, f"no tenant {tenant_id!r}")
    return principal


def queried_tenant(request: web.Request, principal: Principal) -> str:
    """The tenant a read names in ``?tenant=`` (default: the caller's own): a valid tenant id, and
    one the caller may see (:func:`require_tenant`)."""
    tenant = request.query.get("tenant", principal.tenant_id)
    try:
        subjects.validate_token(tenant, "tenant")
    except subjects.InvalidSubjectToken as exc:
        raise bad_parameter("tenant", str(exc), tenant) from None
    require_tenant(request, tenant)
    return tenant
