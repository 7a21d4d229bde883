"""Reading JSON request bodies into typed structs, with the error shape of the edge, and
writing typed answers (the types :mod:`.openapi` documents).

Every body the gateway decodes goes through here, so one place decides what broken input
answers: 415 for another content type, 400 for bytes that are not JSON (or JSON nested deeper
than the decoder recurses, about a thousand levels), 422 with the JSON path for JSON of the
wrong shape. A body that is not what its ``Content-Encoding`` says is a 400 from
:mod:`.errors`, raised by aiohttp while the body is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from democratic_ai.contracts import ErrorCode
from democratic_ai.contracts.fields import rejection

from .errors import ApiError

__all__ = ["check_json", "from_row", "read_json", "respond"]

T = TypeVar("T")
_any_json = msgspec.json.Decoder()
_encode = msgspec.json.Encoder().encode


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
        raise ApiError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            "send a JSON body with 'Content-Type: application/json'",
            {"content_type": request.content_type},
        )
    body = await request.read()
    try:
        return msgspec.json.decode(body, type=body_type)
    except msgspec.ValidationError as exc:
        rejected = rejection(exc)
        raise ApiError(
            ErrorCode.VALIDATION_FAILED, f"body {rejected.path}: {rejected.message}", {"path": rejected.path}
        ) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _not_json(exc) from None


def respond(answer: msgspec.Struct, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON answer of one of the documented response types."""
    return web.Response(body=_encode(answer), status=status, content_type="application/json", headers=headers)


def from_row(answer_type: type[T], row: Mapping[str, Any], **extra: Any) -> T:
    """A read-model row (plus ``extra`` fields) as ``answer_type``; a column the type does not
    expect, or a value of another type, is an error here rather than an undocumented answer."""
    return msgspec.convert({**row, **extra}, answer_type)
