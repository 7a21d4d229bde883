"""Clients that call capabilities: over NATS (:class:`Client`) or through the gateway (:class:`HttpClient`).

Both return the capability's result as plain JSON data and raise :class:`CallError` with the
platform's stable error code when the call fails.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec
from nats.aio.client import Client as NATS

from democratic_ai.contracts import DEFAULT_TTL_SECONDS, error_details, new_request, subjects
from democratic_ai.contracts.messages import ERROR
from democratic_ai.hub.router import Router

from .errors import CallError

__all__ = ["Client", "HttpClient"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class Client:
    """Call capabilities over NATS, as a module or a trusted service inside the platform.

    Calls carry ``tenant`` in their context and subject; the gateway is where tenants are
    authenticated, so only trusted code holds a NATS connection.
    """

    def __init__(self, nc: NATS, *, source_id: str = "client", tenant: str = "system") -> None:
        subjects.validate_token(tenant, "tenant")
        self._router = Router(nc, source_id=source_id)
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
        subjects.validate_capability(capability)
        if not 0 <= priority <= 9:
            raise ValueError("priority must be between 0 and 9.")
        request = new_request(
            capability,
            _encode(payload if payload is not None else {}),
            tenant_id=subjects.validate_token(tenant, "tenant") if tenant else self._tenant,
            source_module_id=self._source_id,
            target_module_id=target_module_id,
            priority=priority,
            ttl=ttl,
        )
        answer = await self._router.call(request)
        if answer.type == ERROR:
            raise CallError(answer.error.code, answer.error.message, error_details(answer))
        return _decode(answer.payload) if answer.payload else None


class HttpClient:
    """Call capabilities through the gateway's HTTP edge with an API key."""

    def __init__(self, base_url: str, api_key: str, *, session: aiohttp.ClientSession | None = None) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {"X-API-Key": api_key}
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

    async def call(self, capability: str, payload: Any = None) -> Any:
        """POST the payload to the capability's invoke endpoint and return ``result``."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = f"{self._base_url}/v1/capabilities/{capability}/invoke"
        async with self._session.post(
            url, data=_encode(payload if payload is not None else {}),
            headers={**self._headers, "Content-Type": "application/json"},
        ) as response:
            body = await response.read()
        try:
            document = _decode(body)
        except msgspec.DecodeError:
            raise CallError("INTERNAL", f"the gateway answered {response.status} with a body that is not JSON") from None
        if response.status != 200:
            error = document.get("error", {}) if isinstance(document, dict) else {}
            raise CallError(
                error.get("code", "INTERNAL"), error.get("message", f"HTTP {response.status}"), error.get("details")
            )
        return document["result"]
