"""Clients that call capabilities: over NATS (:class:`Client`) or through the gateway (:class:`HttpClient`).

Both return the capability's result as plain JSON data and raise :class:`CallError` with the
platform's stable error code when the call fails. Both stream too: ``async for chunk in
client.stream(...)`` yields :class:`Chunk` objects as the module produces them (one, for a
capability that does not stream). Leaving the loop early cancels the call at the module.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
from nats.aio.client import Client as NATS

from democratic_ai.contracts import (
    DEFAULT_TTL_SECONDS,
    MCPMessage,
    error_details,
    new_event,
    new_request,
    subjects,
)
from democratic_ai.contracts.headers import HTTP_API_KEY
from democratic_ai.contracts.messages import ERROR
from democratic_ai.hub.router import Router

from .errors import CallError
from .sse import read_events
from .streaming import Chunk

__all__ = ["Client", "HttpClient"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class Client:
    """Call capabilities over NATS, as a module or a trusted service inside the platform.

    Calls carry ``tenant`` in their context and subject; the gateway is where tenants are
    authenticated, so only trusted code holds a NATS connection. A module's own client
    (``Module.client``) carries the tenant of the call it is serving instead (:mod:`.tenancy`).
    """

    def __init__(
        self, nc: NATS, *, source_id: str = "client", tenant: str = "system", record_failures: bool = True
    ) -> None:
        subjects.validate_token(tenant, "tenant")
        self._nc = nc
        self._router = Router(nc, source_id=source_id, record_failures=record_failures)
        self._source_id = source_id
        self._tenant = tenant

    async def call(
        self,
        capability: str,
        payload: Any = None,
        *,
        tenant: str | None = None,
        target_module_id: str = "",
        priority: int = 5,
        ttl: int = DEFAULT_TTL_SECONDS,
    ) -> Any:
        """Call ``capability`` with ``payload`` (JSON-able) and return its result."""
        answer = await self._router.call(self._request(capability, payload, tenant, target_module_id, priority, ttl))
        if answer.type == ERROR:
            raise CallError(answer.error.code, answer.error.message, error_details(answer))
        data = answer.payload
        return _decode(data) if data else None

    async def stream(
        self,
        capability: str,
        payload: Any = None,
        *,
        tenant: str | None = None,
        target_module_id: str = "",
        priority: int = 5,
        ttl: int = DEFAULT_TTL_SECONDS,
    ) -> AsyncIterator[Chunk]:
        """Call ``capability`` and yield its chunks as they come; ``ttl`` bounds each wait for the next.

        Breaking out of the loop (or closing the generator) cancels the call at the module.
        """
        request = self._request(capability, payload, tenant, target_module_id, priority, ttl)
        call = await self._router.open_stream(request)
        try:
            async for message in call:
                if message.type == ERROR:
                    raise CallError(message.error.code, message.error.message, error_details(message))
                if message.final and not message.payload and not message.HasField("progress"):
                    return  # the closing chunk carries no data of its own
                yield _chunk(message)
        finally:
            await call.close()

    async def publish_event(self, topic: str, data: Any = None, *, tenant: str | None = None) -> None:
        """Publish an event on ``mcp.evt.<tenant>.<topic>``: recorded, and delivered to its subscribers."""
        subjects.validate_capability(topic)
        tenant_id = self._event_tenant_for(tenant)
        event = new_event(topic, _encode(data), tenant_id=tenant_id, source_module_id=self._source_id)
        await self._nc.publish(subjects.event(tenant_id, topic), event.SerializeToString())

    def _tenant_for(self, tenant: str | None) -> str:
        """The tenant a call carries: the one named, else this client's."""
        return subjects.validate_token(tenant, "tenant") if tenant else self._tenant

    def _event_tenant_for(self, tenant: str | None) -> str:
        """The tenant an event is published for: as for a call."""
        return self._tenant_for(tenant)

    def _request(
        self, capability: str, payload: Any, tenant: str | None, target_module_id: str, priority: int, ttl: int
    ) -> MCPMessage:
        _checked_capability(capability)
        if not 0 <= priority <= 9:
            raise ValueError("priority must be between 0 and 9.")
        if ttl < 0:
            raise ValueError("ttl must be a number of seconds, or 0 for the platform's default.")
        return new_request(
            capability,
            _encode(payload if payload is not None else {}),
            tenant_id=self._tenant_for(tenant),
            source_module_id=self._source_id,
            target_module_id=target_module_id,
            priority=priority,
            ttl=ttl,
        )


@functools.lru_cache(maxsize=1024)
def _checked_capability(name: str) -> str:
    """:func:`~democratic_ai.contracts.subjects.validate_capability`, remembered for valid names (an
    invalid one raises, and is not remembered): a client calls the same few capabilities again and again."""
    return subjects.validate_capability(name)


def _chunk(message: MCPMessage) -> Chunk:
    payload = message.payload
    data = _decode(payload) if payload else None
    if not message.HasField("progress"):
        return Chunk(data)
    progress = message.progress
    return Chunk(data, progress.fraction if progress.HasField("fraction") else None, progress.message)


class HttpClient:
    """Call capabilities through the gateway's HTTP edge with an API key."""

    def __init__(self, base_url: str, api_key: str, *, session: aiohttp.ClientSession | None = None) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {HTTP_API_KEY: api_key}
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self, capability: str, payload: Any = None, *, priority: int | None = None, ttl: int | None = None
    ) -> Any:
        """POST the payload to the capability's invoke endpoint and return ``result``."""
        async with self._post(capability, payload, priority, ttl, {}) as response:
            body = await response.read()
        document = _document(response.status, body)
        if response.status != 200:
            raise _error(response.status, document)
        return document["result"]

    async def stream(
        self, capability: str, payload: Any = None, *, priority: int | None = None, ttl: int | None = None
    ) -> AsyncIterator[Chunk]:
        """Call ``capability`` over Server-Sent Events and yield its chunks as they come.

        Breaking out of the loop closes the connection, which cancels the call at the module.
        """
        # No overall deadline: a long call may stream for minutes; each read waits at most ttl.
        timeout = aiohttp.ClientTimeout(total=None, sock_read=(ttl or DEFAULT_TTL_SECONDS) + 5.0)
        async with self._post(capability, payload, priority, ttl, {"Accept": "text/event-stream"}, timeout) as response:
            if response.status != 200:
                raise _error(response.status, _document(response.status, await response.read()))
            async for event, data in read_events(response.content):
                document = _document(response.status, data)
                if event == "chunk":
                    yield _http_chunk(document)
                elif event == "done":
                    return
                elif event == "error":
                    raise _error(502, document)
        raise CallError("INTERNAL", "the stream ended before its 'done' event")

    def _post(
        self,
        capability: str,
        payload: Any,
        priority: int | None,
        ttl: int | None,
        headers: dict[str, str],
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        params = {name: str(value) for name, value in (("priority", priority), ("ttl", ttl)) if value is not None}
        return self._session.post(
            f"{self._base_url}/v1/capabilities/{capability}/invoke",
            data=_encode(payload if payload is not None else {}),
            params=params,
            headers={**self._headers, "Content-Type": "application/json", **headers},
            timeout=timeout or self._session.timeout,
        )


def _document(status: int, body: bytes) -> Any:
    try:
        return _decode(body)
    except msgspec.DecodeError:
        raise CallError("INTERNAL", f"the gateway answered {status} with a body that is not JSON") from None


def _error(status: int, document: Any) -> CallError:
    error = document.get("error", {}) if isinstance(document, dict) else {}
    return CallError(error.get("code", "INTERNAL"), error.get("message", f"HTTP {status}"), error.get("details"))


def _http_chunk(document: dict[str, Any]) -> Chunk:
    progress = document.get("progress") or {}
    return Chunk(document.get("data"), progress.get("fraction"), progress.get("message", ""))
