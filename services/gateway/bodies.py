"""Reading JSON request bodies into typed structs, with the error shape of the edge.

Every body the gateway decodes goes through here, so one place decides what broken input
answers: 415 for another content type, 400 for bytes that are not JSON (or JSON nested deeper
than the decoder recurses, about a thousand levels), 422 with the JSON path for JSON of the
wrong shape. A body that is not what its ``Content-Encoding`` says is a 400 from
:mod:`.errors`, raised by aiohttp while the body is read.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec
from aiohttp import web

from democratic_ai.contracts import ErrorCode
from democratic_ai.contracts.fields import rejection

from .errors import ApiError

__all__ = ["check_json", "read_json"]

T = TypeVar("T")
_any_json = msgspec.json.Decoder()


def _not_json(exc: Exception) -> ApiError:
    if isinstance(exc, RecursionError):
        return ApiError(ErrorCode.BAD_REQUEST, "the body is not acceptable JSON: it is nested too deeply")
    return ApiError(ErrorCode.BAD_REQUEST, f"the body is not valid JSON: {exc}")


def check_json(body: bytes) -> None:
    """Raise a 400 unless ``body`` is one JSON document the gateway can pass on."""
    try:
        _any_json.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _not_json(exc) from None


async def read_json(request: web.Request, body_type: type[T]) -> T:
    """Decode the body as ``body_type``: 415 for another content type, 400 for broken JSON,
    422 with the JSON path for JSON of the wrong shape or outside a field's limits (body types
    use the field types of the events, :mod:`democratic_ai.contracts.fields`)."""
    if request.content_type != "application/json":
        raise ApiError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "send a JSON body with 'Content-Type: application/json'",
                       {"content_type": request.content_type})
    body = await request.read()
    try:
        return msgspec.json.decode(body, type=body_type)
    except msgspec.ValidationError as exc:
        rejected = rejection(exc)
        raise ApiError(ErrorCode.VALIDATION_FAILED, f"body {rejected.path}: {rejected.message}",
                       {"path": rejected.path}) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _not_json(exc) from None
