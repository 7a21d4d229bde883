"""Speaking HTTP to a gateway: one request with a JSON answer, or raw bytes over a socket."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
import msgspec

if TYPE_CHECKING:
    from support.gateway import Gateway


async def http(
    method: str, url: str, *, json: object = None, credential: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    """One HTTP request; returns the status and the JSON body (``{}`` for an empty one)."""
    sent = dict(headers or {})
    if credential is not None:
        sent["Authorization"] = f"Bearer {credential}"
    async with aiohttp.ClientSession() as session, session.request(method, url, json=json, headers=sent) as response:
        body = await response.read()
        return response.status, (msgspec.json.decode(body) if body else {})


async def raw_request(gateway: Gateway, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (request line and header lines, CRLF-separated, without the blank line) and
    ``body`` over a fresh connection; returns the status, the headers (lower-case names) and the body.

    For what an HTTP client library cannot send: bytes that are not UTF-8 in a header, a body
    that lies about its encoding."""
    address = urlsplit(gateway.url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(head + b"\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head_bytes, _, content = answer.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, content
