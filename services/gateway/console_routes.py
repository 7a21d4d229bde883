"""``/console``: the web console's files, and the session that keeps a browser signed in.

The console is a small client app without a build step (``console/``: HTML, CSS and ES modules
written here, no third-party front-end code): every page reads and changes the platform through
the same JSON API a script would use, so a page can do exactly what the API lets its user do —
no second set of permission checks to drift. It holds the API's access token in memory only.

What survives a reload is the **session**: ``POST /console/session`` signs in (tenant, e-mail,
password) and sets the refresh token as a cookie that scripts cannot read (``HttpOnly``), that
no other site's request carries (``SameSite=Strict``), sent over TLS only when the console is
(``Secure``), and only to ``/console/session``; a page load trades it for a fresh access token
(``POST /console/session/refresh``, which spends the refresh token and sets the next one), and
``POST /console/session/end`` revokes the session. Against cross-site request forgery, the three
answer only a request with the ``X-Dai-Console`` header (a form of another site cannot send it,
and a script of another site cannot without a CORS permission this server never grants) and,
when the browser names one, an ``Origin`` of this host; every other state-changing request is
an API call carrying the in-memory token, which another site cannot read.

Every console answer carries a strict Content-Security-Policy — scripts, styles, images and
connections from this origin only, no inline script, no framing — and the pages build their
DOM from text nodes, never from markup, so nothing a tenant writes runs in another's browser.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import msgspec
from aiohttp import web

from democratic_ai.contracts import ErrorCode, PlatformError
from democratic_ai.services.identity import Principal

from .auth import credential_of
from .bodies import read_json
from .errors import ApiError, error_body, status_of
from .meta import request_meta
from .openapi import operation
from .state import GATE, USERS

__all__ = ["CONSOLE_PATH", "CSRF_HEADER", "SESSION_COOKIE", "add_console_routes"]

CONSOLE_PATH = "/console"
SESSION_PATH = CONSOLE_PATH + "/session"
SESSION_COOKIE = "dai_console_session"
CSRF_HEADER = "X-Dai-Console"
STATIC_PREFIX = CONSOLE_PATH + "/static/"
_FILES = resources.files("democratic_ai.services.gateway").joinpath("console")
_TYPES = {".js": "text/javascript", ".css": "text/css", ".json": "application/json", ".svg": "image/svg+xml"}

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " font-src 'self'; manifest-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True)
class _File:
    body: bytes
    content_type: str
    etag: str


def _load_files() -> dict[str, _File]:
    """Every file of the console, by its path under ``console/``: read once, they are small."""
    found: dict[str, _File] = {}

    def walk(folder: Any, prefix: str) -> None:
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                walk(entry, name + "/")
                continue
            suffix = "." + entry.name.rsplit(".", 1)[-1]
            content_type = _TYPES.get(suffix) or mimetypes.guess_type(entry.name)[0]
            if content_type is None or entry.name.startswith("."):
                continue
            body = entry.read_bytes()
            found[name] = _File(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')

    walk(_FILES, "")
    return found


_CONSOLE_FILES = web.AppKey("console_files", dict)


def _serve(request: web.Request, name: str) -> web.Response:
    file = request.app[_CONSOLE_FILES].get(name)
    if file is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"the console has no file {name!r}")
    headers = {**_SECURITY_HEADERS, "ETag": file.etag, "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match") == file.etag:
        return web.Response(status=304, headers=headers)
    charset = "utf-8" if file.content_type.startswith("text/") or file.content_type.endswith("json") else None
    return web.Response(body=file.body, content_type=file.content_type, charset=charset, headers=headers)


@operation(
    "The web console: its page (every console path is the one page; the app routes in the browser).",
    {200: None},
    other_content={"text/html": {"type": "string"}},
    public=True,
)
async def console_page(request: web.Request) -> web.Response:
    return _serve(request, "index.html")


@operation(
    "A file of the web console (scripts, styles, translations).",
    {200: None},
    other_content={"text/javascript": {"type": "string"}, "text/css": {"type": "string"}},
    public=True,
)
async def console_file(request: web.Request) -> web.Response:
    return _serve(request, request.match_info["path"])


@operation("The platform's front door: browsers go on to the console.", {302: None}, public=True)
async def front_door(request: web.Request) -> web.Response:
    raise web.HTTPFound(CONSOLE_PATH)


# The session ------------------------------------------------------------------------------------


class SignIn(msgspec.Struct, forbid_unknown_fields=True):
    tenant_id: str
    email: str
    password: str


class SignedIn(msgspec.Struct):
    """What the console keeps in memory: the access token, and who it speaks for."""

    access_token: str
    expires_in: int  # seconds
    tenant_id: str
    user_id: str
    role: str
    permissions: list[str]


def _check_request(request: web.Request) -> None:
    """FORBIDDEN unless the request comes from the console's own page (see the module docstring)."""
    if request.headers.get(CSRF_HEADER) != "1":
        raise ApiError(
            ErrorCode.FORBIDDEN,
            f"console session requests come from the console: send the header '{CSRF_HEADER}: 1'",
            {"header": CSRF_HEADER},
        )
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin.strip()).netloc.lower() != request.host.lower():
        raise ApiError(
            ErrorCode.FORBIDDEN, "a console session is not opened from another site", {"origin": origin[:200]}
        )


def _is_tls(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _signed_in(request: web.Request, tokens: Any) -> web.Response:
    principal: Principal = request.app[GATE].authenticate(tokens.access_token)
    answer = SignedIn(
        access_token=tokens.access_token,
        expires_in=tokens.expires_in,
        tenant_id=principal.tenant_id,
        user_id=principal.user_id,
        role=principal.role,
        permissions=sorted(principal.permissions),
    )
    response = web.Response(body=msgspec.json.encode(answer), content_type="application/json")
    response.headers.update({**_SECURITY_HEADERS, "Cache-Control": "no-store"})
    secure = _is_tls(request)
    response.set_cookie(
        SESSION_COOKIE, tokens.refresh_token, path=SESSION_PATH, httponly=True, samesite="Strict", secure=secure
    )
    return response


@operation(
    "Sign the console in: an access token for its memory, the session's refresh token in an"
    " HttpOnly, SameSite=Strict cookie. Needs the header X-Dai-Console: 1.",
    {200: SignedIn},
    body=SignIn,
    public=True,
)
async def sign_in(request: web.Request) -> web.Response:
    _check_request(request)
    body = await read_json(request, SignIn)
    tokens = await request.app[USERS].login(
        request_meta(request, "anonymous"), body.tenant_id, body.email, body.password
    )
    return _signed_in(request, tokens)


@operation(
    "Renew the console's access token from its session cookie (the cookie's refresh token is spent"
    " and the next one set); 204 when the browser holds no session. Needs the header X-Dai-Console: 1.",
    {200: SignedIn, 204: None},
    public=True,
)
async def renew(request: web.Request) -> web.Response:
    _check_request(request)
    refresh_token = request.cookies.get(SESSION_COOKIE, "")
    if not refresh_token:  # not an error: every page load of a signed-out browser asks
        return web.Response(status=204, headers={**_SECURITY_HEADERS, "Cache-Control": "no-store"})
    try:
        tokens = await request.app[USERS].refresh(request_meta(request, "anonymous"), refresh_token)
    except PlatformError as exc:
        if status_of(exc.code) >= 500:
            raise
        response = web.Response(
            body=error_body(exc.code, exc.message, exc.details),
            status=status_of(exc.code),
            content_type="application/json",
            headers=_SECURITY_HEADERS,
        )
        response.del_cookie(SESSION_COOKIE, path=SESSION_PATH)  # spent, revoked or expired: of no more use
        return response
    return _signed_in(request, tokens)


@operation(
    "Sign the console out: the session is revoked (its refresh token and the access token sent),"
    " and the cookie cleared. Needs the header X-Dai-Console: 1.",
    {204: None},
    public=True,
)
async def sign_out(request: web.Request) -> web.Response:
    _check_request(request)
    credential = credential_of(request)
    if credential is not None:
        principal = request.app[GATE].authenticate(credential)
        refresh_token = request.cookies.get(SESSION_COOKIE) or None
        await request.app[USERS].logout(request_meta(request, principal.actor), principal, refresh_token)
    response = web.Response(status=204, headers=_SECURITY_HEADERS)
    response.del_cookie(SESSION_COOKIE, path=SESSION_PATH)
    return response


def add_console_routes(app: web.Application) -> None:
    """The console's page, files and session; ``/`` leads to it."""
    app[_CONSOLE_FILES] = _load_files()
    app.router.add_get("/", front_door)
    app.router.add_get(CONSOLE_PATH, console_page)
    app.router.add_get(CONSOLE_PATH + "/{page:[a-z][a-z0-9-]*}", console_page)
    app.router.add_get(STATIC_PREFIX + "{path:[A-Za-z0-9_./-]+}", console_file)
    app.router.add_post(SESSION_PATH, sign_in)
    app.router.add_post(SESSION_PATH + "/refresh", renew)
    app.router.add_post(SESSION_PATH + "/end", sign_out)
