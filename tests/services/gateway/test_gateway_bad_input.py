"""Input an attacker crafts gets a 4xx in the one error shape with a stable code — never a 500.

Some of it cannot be sent by an HTTP client library (bytes that are not UTF-8 in a header, a
body that lies about its encoding), so these tests also speak HTTP/1.1 over a raw socket.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import zlib
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import jwt
import pytest

from democratic_ai.contracts.envelope import Meta
from democratic_ai.services.gateway.state import KEY_RING, USERS

from support.client import http, raw_request
from support.gateway import Gateway
from support.waiting import eventually


def error_code(content: bytes) -> str:
    return json.loads(content)["error"]["code"]


@pytest.mark.parametrize(
    "header",
    [
        "X-API-Key: dai_é_ünïcode".encode(),
        b"X-API-Key: dai_\xff\xfe_not_utf8",
        "Authorization: Bearer éé.ü.ö".encode(),
        b"Authorization: Bearer \xff\xfe.\x80.\x81",
        b"Authorization: Bearer \xc3",
    ],
)
async def test_non_ascii_credentials_are_401(gateway: Gateway, header: bytes) -> None:
    status, _, content = await raw_request(gateway, b"GET /v1/capabilities HTTP/1.1\r\nHost: x\r\n" + header)
    assert (status, error_code(content)) == (401, "UNAUTHENTICATED")


def _signed(gateway: Gateway, **claims: object) -> str:
    """A token signed with the gateway's own current key, with whatever claims a forger likes."""
    key = gateway.app[KEY_RING]._signing_key()
    now = datetime.now(UTC)
    payload = {
        "iss": "democratic-ai",
        "aud": "democratic-ai-api",
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(minutes=5)).timestamp()),
        "jti": "j" * 32,
        **claims,
    }
    return jwt.encode(payload, key.private, algorithm="EdDSA", headers={"kid": key.kid})


async def _a_user(gateway: Gateway) -> tuple[str, str]:
    meta = Meta(at=datetime.now(UTC), actor="test")
    user = await gateway.app[USERS].register_user(
        meta, gateway.tenant, "forged@example.com", "a long password 1", "user"
    )
    return user.user_id, gateway.tenant


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": "9999999999"},
        {"exp": "soon"},
        {"exp": 10**30},
        {"iat": "yesterday"},
        {"jti": ["a", "list"]},
        {"jti": {"a": 1}},
        {"sub": ["a"]},
        {"tenant_id": ["a"]},
        {"exp": None},
        {"exp": True},
    ],
)
async def test_signed_tokens_with_claims_of_the_wrong_type_are_401(gateway: Gateway, claims: dict) -> None:
    user_id, tenant = await _a_user(gateway)
    token = _signed(gateway, **{"sub": user_id, "tenant_id": tenant, **claims})
    status, body = await http("GET", f"{gateway.url}/v1/capabilities", credential=token)
    assert (status, body["error"]["code"]) == (401, "UNAUTHENTICATED"), body


async def test_a_token_whose_header_is_nested_deeply_is_401(gateway: Gateway) -> None:
    header = base64.urlsafe_b64encode(b"[" * 2000 + b"]" * 2000).rstrip(b"=").decode()
    status, body = await http("GET", f"{gateway.url}/v1/capabilities", credential=f"{header}.e30.c2ln")
    assert (status, body["error"]["code"]) == (401, "UNAUTHENTICATED")


async def test_a_correctly_typed_forged_token_still_works(gateway: Gateway) -> None:
    """The control for the test above: the signing and the user are right, so only the types were wrong."""
    user_id, tenant = await _a_user(gateway)
    status, body = await http(
        "GET", f"{gateway.url}/v1/capabilities", credential=_signed(gateway, sub=user_id, tenant_id=tenant)
    )
    assert status == 200, body


@pytest.mark.parametrize("body", [b"not gzip at all", b"\x1f\x8b\x08\x00garbage", b""])
async def test_a_body_that_is_not_what_its_content_encoding_says_is_400(gateway: Gateway, body: bytes) -> None:
    head = (
        b"POST /v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        b"X-API-Key: " + gateway.api_key.encode()
    )
    status, _, content = await raw_request(gateway, head, body)
    assert (status, error_code(content)) == (400, "BAD_REQUEST")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_body_that_inflates_past_the_limit_is_413(gateway: Gateway, encoding: str) -> None:
    inflated = b'{"tenant_id": "' + b"a" * (8 * 1024 * 1024) + b'"}'
    body = gzip.compress(inflated) if encoding == "gzip" else zlib.compress(inflated)
    assert len(body) < 1024 * 1024  # the compressed body itself is within the limit
    head = (
        f"POST /v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: {encoding}"
        f"\r\nX-API-Key: {gateway.api_key}"
    ).encode()
    status, _, content = await raw_request(gateway, head, body)
    assert (status, error_code(content)) == (413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize("encoding", ["deflate", "GZIP", "gzip, gzip"])
async def test_other_bodies_that_lie_about_their_encoding_are_4xx(gateway: Gateway, encoding: str) -> None:
    head = (
        f"POST /v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: {encoding}"
        f"\r\nX-API-Key: {gateway.api_key}"
    ).encode()
    status, _, content = await raw_request(gateway, head, b"plainly not compressed")
    assert 400 <= status < 500 and error_code(content) in ("BAD_REQUEST", "UNSUPPORTED_MEDIA_TYPE"), content


async def test_an_unknown_content_encoding_is_415(gateway: Gateway) -> None:
    head = (
        b"POST /v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: rot13\r\n"
        b"X-API-Key: " + gateway.api_key.encode()
    )
    status, _, content = await raw_request(gateway, head, b'{"tenant_id": "x"}')
    assert (status, error_code(content)) == (415, "UNSUPPORTED_MEDIA_TYPE")


@pytest.mark.parametrize("path", ["/v1/tenants", "/v1/capabilities/test.echo/invoke", "/v1/auth/login"])
@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
async def test_json_nested_10000_deep_is_a_4xx(gateway: Gateway, path: str, opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    body = opener * 10_000 + b"1" + closer * 10_000
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: ".encode()
    status, _, content = await raw_request(gateway, head + gateway.api_key.encode(), body)
    assert 400 <= status < 500 and error_code(content) in ("BAD_REQUEST", "VALIDATION_FAILED"), (status, content)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/tenants/%00",
        "/v1/invoices/%00",
        "/v1/tenants/a%00b/users",
        "/v1/tenants/%00/users/%00",
        "/v1/invoices?tenant=%00",
        "/v1/usage?tenant=%00",
        "/v1/invoices?%00=x",
    ],
)
async def test_nul_in_the_path_or_query_is_400(gateway: Gateway, path: str) -> None:
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: ".encode() + gateway.api_key.encode()
    status, _, content = await raw_request(gateway, head)
    assert (status, error_code(content)) == (400, "BAD_REQUEST"), content


@pytest.mark.parametrize(
    "path",
    [
        b"/v1/tenants/%ED%A0%80",  # a lone surrogate, encoded as if it were UTF-8
        b"/v1/tenants/%FF",
        b"/v1/tenants/\xff\xfe",
        b"/v1/invoices/\xed\xa0\x80",
        b"/v1/invoices?tenant=\xff",
    ],
)
async def test_bytes_that_are_not_utf8_in_the_path_are_a_4xx(gateway: Gateway, path: bytes) -> None:
    head = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nX-API-Key: " + gateway.api_key.encode()
    status, _, content = await raw_request(gateway, head)
    assert 400 <= status < 500 and error_code(content) in ("BAD_REQUEST", "NOT_FOUND"), (status, content)


async def test_a_user_agent_that_is_not_utf8_does_not_break_a_command(gateway: Gateway) -> None:
    """The User-Agent is recorded in the event a command appends."""
    body = json.dumps({"name": "from a broken client"}).encode()
    head = (
        f"POST /v1/tenants/{gateway.tenant}/api-keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-API-Key: {gateway.api_key}\r\nUser-Agent: ".encode()
        + b"broken \xff\xfe agent"
    )
    status, _, content = await raw_request(gateway, head, body)
    assert status == 201, content


async def test_the_gateway_still_serves_after_all_that(gateway: Gateway) -> None:
    for path in ("/v1/tenants/%00", "/v1/invoices/%00"):
        await raw_request(gateway, f"GET {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {gateway.api_key}".encode())

    async def tenant_status() -> int | None:
        status, _ = await http("GET", f"{gateway.url}/v1/tenants/{gateway.tenant}", credential=gateway.api_key)
        return None if status == 404 else status  # the tenant's row may still be on its way into the read model

    assert await eventually(tenant_status, "the tenant's row in the read model", timeout=5, interval=0.05) == 200


async def _raw_exchange(gateway: Gateway, data: bytes) -> bytes:
    address = urlsplit(gateway.url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    "data",
    [
        b"GET http://elsewhere.example/v1/capabilities HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"CONNECT elsewhere.example:443 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"BREW /v1/capabilities HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"Connection: close\r\n\r\n",
        (
            b"POST /v1/tenants HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"zz\r\nabc\r\n0\r\n\r\n"
        ),
        b"POST /v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\nConnection: close\r\n\r\n",
        (
            b"POST /v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n"
            b"Connection: close\r\n\r\nabcdef"
        ),
        b"POST /v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
        b"POST /v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\nConnection: close\r\n\r\n",
        b"GET /v1/capabilities HTTP/9.9\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET /v1/capabilities HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\nConnection: close\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello on the plain port
    ],
)
async def test_protocol_oddities_are_answered_4xx_in_the_error_shape(gateway: Gateway, data: bytes) -> None:
    answer = await _raw_exchange(gateway, data)
    head, _, content = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:300]
    assert b"server:" not in head.lower()
    assert json.loads(content)["error"]["code"], answer[:300]
