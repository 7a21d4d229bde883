"""Every route of the gateway, swept with hostile path parameters, query values and bodies: each
answer is a 4xx (or a success) in the one error shape — never a 5xx.

The sweep sends nothing a command could append: every body it sends is refused while it is
decoded, so it cannot put an event into the shared log (validating command *fields* is the
business of the command tests).
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import pytest
from aiohttp import web

from democratic_ai.services.gateway.auth import STRIPE_WEBHOOK_PATH

from support.client import raw_request
from support.gateway import Gateway

PATH_VALUES = ["%00", "%2F", "%2e%2e", "..", "%C3%A9", "a" * 300, "%20", "%FF", "A", "-", "x%00y", "%25"]
QUERY = {
    "tenant": ["", "A", "..", "%00x", "a" * 300, "%C3%A9", "system"],
    "from": [
        "yesterday",
        "0001-01-01",
        "9999-12-31",
        "9999-12-31T23:59:59+00:00",
        "2026-01-01T00:00:00-23:59",
        "1e9",
        "%00",
    ],
    "to": ["0001-01-01", "9999-12-31", "9999-12-31T23:59:59-14:00", "2026-13-45"],
    "granularity": ["hour", "day", "month", "year", ""],
    "metric": ["calls", "nope", ""],
    "capability": ["Bad..Name", "a" * 300],
    "module": ["Bad Module", ""],
    "priority": ["-1", "1e99", "99999999999999999999999", "NaN"],
    "ttl": ["0", "-5", "1e309", "99999999999999999999999"],
    "format": ["html", "pdf", ""],
}
BODIES = [
    b"not json",
    b"[" * 5000 + b"]" * 5000,
    b'{"a": ' * 5000 + b"1" + b"}" * 5000,
    b"1e999999",
    b'"\\ud800"',
    b"\xff\xfe{}",
    b'{"tenant_id": 5, "name": [], "email": {}, "password": null, "plan": 1, "refresh_token": 7, "rate_limit": "x"}',
    b"[]",
    b"null",
]
_PARAM = re.compile(r"\{([^}]+)\}")


def _routes(app: web.Application) -> list[tuple[str, str]]:
    """Every (method, path template); not Stripe's webhook, which answers 503 to anything while
    Stripe is off (the Stripe tests sweep its signatures)."""
    found = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "*") or route.resource.canonical == STRIPE_WEBHOOK_PATH:
            continue
        found.add((route.method, route.resource.canonical))
    return sorted(found)


def _fill(template: str, tenant: str, nasty: tuple[str, str] | None = None) -> str:
    def value(match: re.Match[str]) -> str:
        if nasty is not None and match[1] == nasty[0]:
            return nasty[1]
        return tenant if match[1] == "tenant" else "x"

    return _PARAM.sub(value, template)


async def _send(
    gateway: Gateway, method: str, target: str, body: bytes | None = None, content_type: str = "application/json"
) -> tuple[int, bytes]:
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nX-API-Key: {gateway.api_key}".encode()
    if body is not None:
        head += f"\r\nContent-Type: {content_type}".encode()
    status, _, content = await raw_request(gateway, head, body or b"")
    return status, content


def _assert_a_clean_refusal(status: int, content: bytes, what: object) -> None:
    assert status < 500, (what, status, content[:300])
    if status >= 400:
        error = json.loads(content)["error"]
        assert error["code"] and isinstance(error["message"], str), (what, content[:300])


_BODY_METHODS = {"POST", "PUT", "PATCH"}
# Routes that act without a body; the sweep never calls them with one it would accept.
_ACTS_WITHOUT_BODY = {
    ("POST", "/v1/billing/close-period"),
    ("POST", "/v1/billing/payment-method"),
    ("POST", "/v1/auth/logout"),
    ("DELETE", "/v1/billing/plan"),
}


_IGNORES_ITS_BODY = {("POST", "/v1/billing/payment-method")}


async def test_hostile_path_parameters(gateway: Gateway) -> None:
    assert len(_routes(gateway.app)) >= 25  # the sweep sees the whole router, not a few routes
    for method, template in _routes(gateway.app):
        for name in _PARAM.findall(template):
            for raw in PATH_VALUES:
                target = _fill(template, gateway.tenant, (name, raw))
                body = b"not json" if method in _BODY_METHODS else None
                status, content = await _send(gateway, method, target, body)
                _assert_a_clean_refusal(status, content, (method, target))


_NOT_SWEPT = ("/v1/ws", "/v1/calls/live", "/v1/ops/projections")


@pytest.mark.parametrize("name", sorted(QUERY))
async def test_hostile_query_values(gateway: Gateway, name: str) -> None:
    for method, template in _routes(gateway.app):
        # The WebSocket, the live feed of calls (an answer that never ends) and the projections
        # worker's status (503 NOT_READY where no worker runs, as in this test) are tested elsewhere.
        if template in ("/v1/ws", "/v1/calls/live", "/v1/ops/projections") or (
            (method, template) in _ACTS_WITHOUT_BODY and name != "tenant"
        ):
            continue
        for raw in QUERY[name]:
            value = raw if "%" in raw else quote(raw, safe="")
            target = f"{_fill(template, gateway.tenant)}?{name}={value}"
            body = b"not json" if method in _BODY_METHODS else None
            if (method, template) in _ACTS_WITHOUT_BODY and value in ("", "system"):
                continue  # a valid tenant: it would act
            status, content = await _send(gateway, method, target, body)
            _assert_a_clean_refusal(status, content, (method, target))


async def test_hostile_bodies(gateway: Gateway) -> None:
    for method, template in _routes(gateway.app):
        if method not in _BODY_METHODS or (method, template) in _IGNORES_ITS_BODY:
            continue
        target = _fill(template, gateway.tenant)
        for body in BODIES:
            status, content = await _send(gateway, method, target, body)
            _assert_a_clean_refusal(status, content, (method, target, body[:40]))
        status, content = await _send(gateway, method, target, b"{}", content_type="text/plain")
        _assert_a_clean_refusal(status, content, (method, target, "text/plain"))


async def test_no_or_a_broken_credential_on_every_route(gateway: Gateway) -> None:
    for method, template in _routes(gateway.app):
        target = _fill(template, gateway.tenant)
        for header in (
            b"",
            b"\r\nX-API-Key: dai_\xff",
            b"\r\nAuthorization: Bearer a.b.c",
            b"\r\nAuthorization: Basic \x00",
        ):
            head = f"{method} {target} HTTP/1.1\r\nHost: x".encode() + header
            status, _, content = await raw_request(gateway, head, b"not json" if method in _BODY_METHODS else b"")
            _assert_a_clean_refusal(status, content, (method, target, header))
