"""What the edge refuses before a handler sees it: parts of a request no read model can hold.

A handler passes path parameters and query values on to Postgres and into subjects. Text that
Postgres cannot store (NUL) or UTF-8 cannot encode (a lone surrogate, which is how Python
spells header or path bytes that were not UTF-8) would fail there with a 500, so it is refused
here with a 400 naming the part. A ``Content-Encoding`` the gateway does not decode is a 415:
aiohttp would otherwise hand the compressed bytes on as if they were the body.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD

from democratic_ai.contracts import ErrorCode

from .errors import ApiError

__all__ = ["SUPPORTED_CONTENT_ENCODINGS", "header_text", "input_middleware", "storable"]

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
SUPPORTED_CONTENT_ENCODINGS = frozenset(
    {"identity", "gzip", "deflate"} | ({"br"} if HAS_BROTLI else set()) | ({"zstd"} if HAS_ZSTD else set())
)


def storable(text: str) -> bool:
    """Whether Postgres can store ``text`` and UTF-8 can encode it."""
    return _UNSTORABLE.search(text) is None


def header_text(request: web.Request, name: str, limit: int = 256) -> str:
    """A header's value as text an event can carry: at most ``limit`` characters, with anything
    unstorable (bytes that were not UTF-8, NUL) replaced by U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", request.headers.get(name, "")[:limit])


@web.middleware
async def input_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    for name, value in request.match_info.items():
        if not storable(value):
            raise ApiError(
                ErrorCode.BAD_REQUEST, f"path parameter {name!r} holds a NUL or a broken character", {"parameter": name}
            )
    for name, value in request.query.items():
        if not (storable(name) and storable(value)):
            raise ApiError(
                ErrorCode.BAD_REQUEST,
                "a query parameter holds a NUL or a broken character",
                {"parameter": name if storable(name) else ""},
            )
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding and encoding not in SUPPORTED_CONTENT_ENCODINGS:
        raise ApiError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            "the body's Content-Encoding is not one the gateway decodes",
            {"supported": sorted(SUPPORTED_CONTENT_ENCODINGS)},
        )
    return await handler(request)
