"""The gateway's HTTP/1.1 connections: a request aiohttp's parser refuses is answered in the
platform's error shape, and is never quoted back or into the log.

aiohttp answers a request it cannot parse (a malformed header line, bytes that are not UTF-8
in the request line, a header too long) itself, before any middleware runs: with a text body
that quotes the offending line — which may be an ``X-API-Key`` or ``Authorization`` header —
and a log record at ERROR with the same text and a traceback. Here the answer is
``{"error": {"code": "BAD_REQUEST", ...}}`` naming only the kind of fault, and the log line
names the kind and the peer, nothing the client sent.

aiohttp has no setting for this, so it leans on three of its internals, all here: the runner's
``_make_server`` (to build a server whose connections are a ``RequestHandler`` subclass with its
own ``handle_error``), that server's ``_loop`` and ``_kwargs``, and ``Response._prepare_headers``
(the application's ``on_response_prepare`` signal does not run for a request that was never
routed, so the answer removes the ``Server`` banner itself). ``tests/services/gateway/test_gateway_hygiene.py``
and ``tests/services/gateway/test_gateway_bad_input.py`` fail if an aiohttp upgrade changes any of them.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from democratic_ai.contracts import ErrorCode

from .errors import error_body
from .hygiene import apply_edge_headers

__all__ = ["GatewayRunner"]

log = logging.getLogger(__name__)


class _UnroutedResponse(web.Response):
    """An answer to a request the application never saw, so ``on_response_prepare`` never runs for it."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()  # adds aiohttp's Server header, which this removes
        apply_edge_headers(self.headers)


class _Handler(web.RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        kind = type(exc).__name__ if exc is not None else "error"
        if status >= 500:
            # Not the client's input: an exception that escaped the application's own handling.
            log.error("unhandled %s on a connection from %s", kind, request.remote, exc_info=exc)
            code, text, details = ErrorCode.INTERNAL, "internal error; it has been logged", {}
        else:
            log.info("refused a request from %s that is not valid HTTP/1.1 (%s)", request.remote, kind)
            code = ErrorCode.PAYLOAD_TOO_LARGE if status == 413 else ErrorCode.BAD_REQUEST
            text = "the request is not valid HTTP/1.1: a malformed request line or header, or bytes that are not UTF-8"
            details = {"fault": kind}
        if request.writer.output_size > 0:
            raise ConnectionError("a response is under way; the connection can only be closed")
        response = _UnroutedResponse(
            body=error_body(code, text, details), status=status, content_type="application/json"
        )
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An ``AppRunner`` whose connections answer unparsable requests as described above."""

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _Server(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **plain._kwargs,  # noqa: SLF001 - aiohttp's
        )
