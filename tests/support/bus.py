"""Modules on the bus with their own credentials: registering one, connecting as it, and the
permissions violations the server sends it."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from democratic_ai.contracts.bus import BusOptions, connect
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.services.busauth import inbox_prefix

from support.client import http
from support.gateway import Gateway
from support.waiting import eventually


class Violations:
    """The errors the server sent one connection, kept for assertions."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def record(self, error: Exception) -> None:
        self.errors.append(str(error))

    async def wait_for(self, fragment: str, timeout: float = 3.0) -> str:
        """The first error that mentions ``fragment``, once the server has sent it."""

        def mentioned() -> str | None:
            # nats-py lowercases the server's message
            return next((error for error in self.errors if fragment.lower() in error.lower()), None)

        return await eventually(
            mentioned,
            lambda: f"a permissions violation mentioning {fragment!r}; got {self.errors}",
            timeout=timeout,
            interval=0.02,
        )


async def register(gateway: Gateway, module_id: str, capabilities: list[str]) -> str:
    """Register ``module_id`` through the gateway; returns its bus credential."""
    status, body = await http(
        "POST",
        f"{gateway.url}/v1/modules",
        headers=gateway.headers,
        json={"module_id": module_id, "name": module_id, "capabilities": capabilities},
    )
    assert status == 201, (status, body)
    return body["credential"]


async def module_connection(
    nats_server: NatsServer, credential: str, module_id: str, violations: Violations | None = None, **kwargs: object
) -> NATS:
    """A connection as module ``module_id`` with its ``credential``; ``violations`` keeps the server's errors."""
    options = BusOptions(url=nats_server.url, credential=credential)
    return await connect(
        options,
        f"test-{module_id}",
        error_cb=violations.record if violations else None,
        inbox_prefix=inbox_prefix(module_id).encode(),
        connect_timeout=3,
        **kwargs,
    )
