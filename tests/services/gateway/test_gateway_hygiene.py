"""Edge hygiene: no version banner, the security headers on every answer, no caching of
credentials, and a malformed request never quoted back or into the log."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime

import aiohttp
import pytest

from democratic_ai.contracts.envelope import Meta
from democratic_ai.services.gateway.state import USERS

from support.client import raw_request
from support.gateway import Gateway


def assert_edge_headers(headers: dict[str, str] | aiohttp.typedefs.LooseHeaders, where: object) -> None:
    lower = {k.lower(): v for k, v in dict(headers).items()}
    assert "server" not in lower, (where, lower.get("server"))
    assert lower.get("x-content-type-options") == "nosniff", where
    assert lower.get("referrer-policy") == "no-referrer", where


async def _answer(method: str, url: str, **kw: object) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kw) as response:
        return response.status, dict(response.headers), await response.read()


async def test_every_kind_of_answer_carries_the_edge_headers_and_no_banner(gateway: Gateway) -> None:
    key = {"X-API-Key": gateway.api_key}
    answers = [
        await _answer("GET", f"{gateway.url}/healthz"),
        await _answer("GET", f"{gateway.url}/v1/capabilities", headers=key),
        await _answer("GET", f"{gateway.url}/v1/capabilities"),  # 401
        await _answer("GET", f"{gateway.url}/v1/nothing", headers=key),  # 404
        await _answer("DELETE", f"{gateway.url}/v1/capabilities", headers=key),  # 405
        await _answer(
            "POST",
            f"{gateway.url}/v1/tenants",
            headers={**key, "Content-Type": "application/json"},
            data=io.BytesIO(b"x" * (2 * 1024 * 1024)),
        ),  # 413
        await _answer("POST", f"{gateway.url}/v1/auth/logout", headers=key),  # 204
    ]
    assert [status for status, _, _ in answers] == [200, 200, 401, 404, 405, 413, 204]
    for status, headers, _ in answers:
        assert_edge_headers(headers, status)
        assert headers.get("Cache-Control") == "no-store", status


async def test_an_answer_to_an_unparsable_request_has_them_too(gateway: Gateway) -> None:
    status, headers, content = await raw_request(gateway, b"GET /v1/capabilities HTTP/1.1\r\nHost: x\r\nBad Header")
    assert status == 400
    assert_edge_headers(headers, "parser")
    assert json.loads(content)["error"]["code"] == "BAD_REQUEST"


async def test_the_websocket_handshake_has_them(gateway: Gateway) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{gateway.url}/v1/ws", headers={"X-API-Key": gateway.api_key}) as ws,
    ):
        assert_edge_headers(ws._response.headers, "101")
        assert (await ws.receive_json(timeout=5))["type"] == "READY"


async def test_answers_carrying_credentials_are_not_cached(gateway: Gateway) -> None:
    meta = Meta(at=datetime.now(UTC), actor="test")
    await gateway.app[USERS].register_user(
        meta, gateway.tenant, "cache@example.com", "a long password 1", "tenant_admin"
    )
    json_headers = {"Content-Type": "application/json"}
    status, headers, body = await _answer(
        "POST",
        f"{gateway.url}/v1/auth/login",
        headers=json_headers,
        data=json.dumps({"tenant_id": gateway.tenant, "email": "cache@example.com", "password": "a long password 1"}),
    )
    assert status == 200 and headers["Cache-Control"] == "no-store"
    tokens = json.loads(body)
    status, headers, body = await _answer(
        "POST",
        f"{gateway.url}/v1/auth/refresh",
        headers=json_headers,
        data=json.dumps({"refresh_token": tokens["refresh_token"]}),
    )
    assert status == 200 and headers["Cache-Control"] == "no-store"
    status, headers, body = await _answer(
        "POST",
        f"{gateway.url}/v1/tenants/{gateway.tenant}/api-keys",
        headers={**json_headers, "Authorization": f"Bearer {json.loads(body)['access_token']}"},
        data=b'{"name": "k"}',
    )
    assert status == 201 and json.loads(body)["api_key"].startswith("dai_")
    assert headers["Cache-Control"] == "no-store"
    assert_edge_headers(headers, "api key")


def _everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(record) for record in caplog.records)


@pytest.mark.parametrize(
    "line",
    [
        b"X-API-Key: {key}\x01",  # a control character in the value
        b"X-API-Key : {key}",  # whitespace before the colon
        b"Authorization Bearer {key}",  # no colon at all
        b" Authorization: Bearer {key}",  # a continuation line
        b"X-API-Key: {key}\x00tail",
        b"X-API-Key: {key}\rtail",
        b"X-API-Key: {key}" + b"A" * 9000,  # longer than a header may be
    ],
)
async def test_a_malformed_header_line_is_never_echoed_nor_logged(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, line: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = gateway.api_key
    head = b"GET /v1/capabilities HTTP/1.1\r\nHost: x\r\n" + line.replace(b"{key}", secret.encode())
    status, headers, content = await raw_request(gateway, head)
    assert 400 <= status < 500
    assert json.loads(content)["error"]["code"] in ("BAD_REQUEST", "PAYLOAD_TOO_LARGE")
    secret_part = secret[-20:]  # the random tail; a prefix alone would not be secret
    assert secret_part not in content.decode("latin-1")
    assert all(secret_part not in value for value in headers.values())
    logged = _everything_logged(caplog)
    assert "not valid HTTP/1.1" in logged  # the refusal is logged …
    assert secret_part not in logged  # … without what the client sent


@pytest.mark.parametrize(
    "credential",
    ["not-a-jwt-SECRETSECRET", "eyJhbGciOiJub25lIn0.SECRETSECRET.x", "dai_SECRETSECRET_wrong", "a.b.c.SECRETSECRET"],
)
async def test_a_refused_credential_is_not_quoted_in_the_answer(gateway: Gateway, credential: str) -> None:
    status, _, content = await _answer(
        "GET", f"{gateway.url}/v1/capabilities", headers={"Authorization": f"Bearer {credential}"}
    )
    assert status == 401
    assert "SECRETSECRET" not in content.decode()
