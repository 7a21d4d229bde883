"""Bad input at the HTTP edge gets a clear 4xx in the one error shape — never a 500."""

from __future__ import annotations

import io

import aiohttp
import pytest

from support.gateway import Gateway


async def _request(method: str, url: str, **kw: object) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kw) as response:
        return response.status, await response.json()


def _invoke(gateway: Gateway, capability: str = "text.summarize") -> str:
    return f"{gateway.url}/v1/capabilities/{capability}/invoke"


async def test_health_endpoints_need_no_key(gateway: Gateway) -> None:
    assert await _request("GET", f"{gateway.url}/healthz") == (200, {"status": "ok"})
    assert await _request("GET", f"{gateway.url}/readyz") == (200, {"status": "ready"})


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "dai_000000000000_not-a-real-key"},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
    ],
)
async def test_missing_or_bad_key_is_401(gateway: Gateway, headers: dict[str, str]) -> None:
    status, body = await _request(
        "POST", _invoke(gateway), data=b'{"text": "x"}', headers={**headers, "Content-Type": "application/json"}
    )
    assert status == 401
    assert body["error"]["code"] == "UNAUTHENTICATED"


async def test_bearer_form_of_the_key_is_accepted(gateway: Gateway) -> None:
    status, body = await _request(
        "GET", f"{gateway.url}/v1/capabilities", headers={"Authorization": f"Bearer {gateway.api_key}"}
    )
    assert status == 200 and "capabilities" in body


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b'{"text": ', "application/json", 400, "BAD_REQUEST"),
        (b"", "application/json", 400, "BAD_REQUEST"),
        (b"text=hello", "application/x-www-form-urlencoded", 415, "UNSUPPORTED_MEDIA_TYPE"),
        (b'{"text": "hi"}', "text/plain", 415, "UNSUPPORTED_MEDIA_TYPE"),
        (b'{"text": "' + b"a" * (2 * 1024 * 1024) + b'"}', "application/json", 413, "PAYLOAD_TOO_LARGE"),
    ],
)
async def test_malformed_bodies_are_clear_4xx(
    gateway: Gateway, body: bytes, content_type: str, status: int, code: str
) -> None:
    got_status, got = await _request(
        "POST",
        _invoke(gateway),
        data=io.BytesIO(body),
        headers={"X-API-Key": gateway.api_key, "Content-Type": content_type},
    )
    assert (got_status, got["error"]["code"]) == (status, code)
    assert got["error"]["message"]


@pytest.mark.parametrize(
    ("capability", "params"),
    [
        ("Text.Summarize", {}),
        ("text..summarize", {}),
        ("text.summarize", {"ttl": "0"}),
        ("text.summarize", {"ttl": "soon"}),
        ("text.summarize", {"priority": "10"}),
        ("text.summarize", {"module": "Bad Module"}),
    ],
)
async def test_bad_names_and_parameters_are_400(gateway: Gateway, capability: str, params: dict[str, str]) -> None:
    status, body = await _request(
        "POST", _invoke(gateway, capability), data=b"{}", headers=gateway.headers, params=params
    )
    assert status == 400
    assert body["error"]["code"] == "BAD_REQUEST"


async def test_unknown_route_and_wrong_method(gateway: Gateway) -> None:
    status, body = await _request("GET", f"{gateway.url}/v1/nothing", headers=gateway.headers)
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")
    status, body = await _request("GET", _invoke(gateway), headers=gateway.headers)
    assert (status, body["error"]["code"]) == (405, "METHOD_NOT_ALLOWED")
