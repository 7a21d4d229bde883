"""The headers every answer of the gateway carries, and the one it never does.

- No ``Server`` header: aiohttp's names the versions of aiohttp and Python, which tells an
  attacker which advisories apply.
- ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer`` everywhere.
- ``Cache-Control: no-store`` unless the handler chose a cache policy itself. Every answer is
  for one caller, and many carry credentials — the tokens of a login or a refresh, the secret
  of a new API key, a module's credential — which no browser or proxy cache may keep. Setting
  it on all answers means a new route that returns a credential cannot forget it.

The application applies them in ``on_response_prepare``; a request that never reached the
application (aiohttp's parser refused it) gets them from :mod:`.protocol`.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from aiohttp import hdrs, web

__all__ = ["EDGE_HEADERS", "apply_edge_headers", "edge_headers"]

EDGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def apply_edge_headers(headers: MutableMapping[str, str]) -> None:
    headers.pop(hdrs.SERVER, None)
    headers.update(EDGE_HEADERS)
    headers.setdefault(hdrs.CACHE_CONTROL, "no-store")


async def edge_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` handler: runs after aiohttp has added its own headers, before they are sent."""
    apply_edge_headers(response.headers)
