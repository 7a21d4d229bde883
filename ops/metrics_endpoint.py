"""``GET /metrics`` of a worker (the projections, the hub): a small HTTP server of its own.

A worker serves no API, so its metrics get a port of their own, off unless one is given
(``--metrics-port`` or the worker's environment variable): ``dai up`` runs every worker on one
host, where a default port would be taken by the second. It binds to 127.0.0.1 unless told
otherwise and asks for no credential — unlike the gateway's ``/metrics``, which faces clients and
needs ``metrics:read``. A worker's metrics name no tenant, but they say how busy the platform is:
bind them to another address only on a network that only Prometheus reaches.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .ports import PortInUseError

__all__ = ["MetricsAddress", "metrics_address", "serve_metrics"]


@dataclass(frozen=True, slots=True)
class MetricsAddress:
    host: str
    port: int


def metrics_address(port: int | None, host: str, env: str) -> MetricsAddress | None:
    """Where to serve the metrics: ``port`` if given, else the environment variable ``env``; None if neither."""
    if port is None:
        raw = os.environ.get(env, "").strip()
        if not raw:
            return None
        try:
            port = int(raw)
        except ValueError:
            raise SystemExit(f"dai: {env} must be a port number, not {raw!r}") from None
    if not 0 < port < 65536:
        raise SystemExit(f"dai: the metrics port must be between 1 and 65535, not {port}")
    return MetricsAddress(host, port)


async def serve_metrics(address: MetricsAddress, render: Callable[[], Awaitable[bytes]], what: str) -> web.AppRunner:
    """Serve ``render()`` at ``GET /metrics`` on ``address``; the caller cleans the runner up."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=await render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, address.host, address.port).start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise SystemExit(f"dai: {PortInUseError(address.port, what, '--metrics-port')}") from None
        raise SystemExit(f"dai: cannot serve the {what} on {address.host}:{address.port}: {exc.strerror}") from None
    return runner
