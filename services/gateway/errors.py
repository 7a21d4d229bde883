"""Every error of the HTTP edge is ``{"error": {"code", "message", "details"}}`` with a fitting status.

PlatformError       every domain error (identity, billing, metering, projections) and ApiError, the
                    edge's own: a stable ErrorCode, a message, details; ``STATUS`` below alone
                    maps its code to the HTTP status (a 5xx is logged as a warning)
aiohttp HTTPException (unknown route, wrong method, body too large) → the same shape
RequestPayloadError a body aiohttp cannot read, e.g. not what its Content-Encoding says → 400
anything else       → 500 INTERNAL, logged with its traceback
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from aiohttp import web
from nats.errors import Error as NatsError

from democratic_ai.contracts import ErrorCode, PlatformError
from democratic_ai.services.identity import Throttled

__all__ = [
    "STATUS",
    "ApiError",
    "ErrorBody",
    "ErrorDetail",
    "bad_parameter",
    "error_body",
    "error_middleware",
    "error_response",
    "status_of",
]

log = logging.getLogger(__name__)

STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CAPABILITY_NOT_FOUND: 404,
    ErrorCode.MODULE_NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.NOT_ACCEPTABLE: 406,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.VALIDATION_FAILED: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.MODULE_ERROR: 502,
    # The instance running the call died: an upstream failure mid-call, not "try again, nothing
    # happened" (503) — the call may have partly run, so only an idempotent call is safe to retry.
    ErrorCode.MODULE_UNAVAILABLE: 502,
    ErrorCode.CAPABILITY_UNAVAILABLE: 503,
    ErrorCode.NOT_READY: 503,
    ErrorCode.PAYMENT_PROVIDER_UNAVAILABLE: 503,
    ErrorCode.PAYMENT_PROVIDER_ERROR: 502,
    ErrorCode.TIMEOUT: 504,
}

_encode = msgspec.json.Encoder().encode


class ApiError(PlatformError):
    """The edge's own error: its code is given per instance, its status is ``STATUS[code]``."""

    def __init__(self, code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, **(details or {}))
        self.code = code


def bad_parameter(parameter: str, message: str, value: str | None = None) -> ApiError:
    """A 400 BAD_REQUEST naming the query parameter at fault (and the value given)."""
    details = {"parameter": parameter} if value is None else {"parameter": parameter, "value": value}
    return ApiError(ErrorCode.BAD_REQUEST, message, details)


def status_of(code: ErrorCode) -> int:
    """The HTTP status of an error with ``code``: the table above, 500 for a code it lacks."""
    return STATUS.get(code, 500)


class ErrorDetail(msgspec.Struct):
    code: str  # a stable ErrorCode
    message: str  # for people; may change
    details: dict[str, Any]  # what the code's callers need, e.g. "path" of a refused field


class ErrorBody(msgspec.Struct):
    """The body of every 4xx and 5xx of the edge."""

    error: ErrorDetail


def error_body(code: ErrorCode | str, message: str, details: dict[str, Any] | None = None) -> bytes:
    return _encode(ErrorBody(ErrorDetail(str(code), message, details or {})))


def error_response(
    code: ErrorCode | str,
    message: str,
    details: dict[str, Any] | None = None,
    *,
    status: int,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        body=error_body(code, message, details), status=status, content_type="application/json", headers=headers
    )


_HTTP_CODES: dict[int, tuple[ErrorCode, str]] = {
    404: (ErrorCode.NOT_FOUND, "no such endpoint"),
    405: (ErrorCode.METHOD_NOT_ALLOWED, "method not allowed on this endpoint"),
    413: (ErrorCode.PAYLOAD_TOO_LARGE, "the request body is too large"),
}


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except PlatformError as exc:
        status = status_of(exc.code)
        if status >= 500:
            log.warning("%s on %s %s: %s", type(exc).__name__, request.method, request.path, exc.message)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Throttled) else None
        return error_response(exc.code, exc.message, exc.details, status=status, headers=headers)
    except web.RequestPayloadError:
        # Say what, not the parser's words: they may quote the body.
        return error_response(
            ErrorCode.BAD_REQUEST,
            "the request body could not be read: it is truncated or not what its Content-Encoding header says",
            status=400,
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, message = _HTTP_CODES.get(exc.status, (ErrorCode.BAD_REQUEST, exc.reason))
        details: dict[str, Any] = {}
        if exc.status == 413:
            details = {"max_bytes": request.app._client_max_size}  # noqa: SLF001 - aiohttp has no public getter
        elif exc.status == 405:
            details = {"allowed": sorted(getattr(exc, "allowed_methods", ()))}
        return error_response(code, message, details, status=exc.status)
    except NatsError as exc:
        # The bus did not answer (a timeout, a reconnect under way): not a bug of the request's,
        # and nothing the caller can fix but by trying again.
        log.warning("the bus failed %s %s: %r", request.method, request.path, exc, exc_info=True)
        return error_response(
            ErrorCode.NOT_READY,
            "the event log did not answer in time; the change may or may not have been recorded:"
            " read it back, then retry",
            status=503,
            headers={"Retry-After": "1"},
        )
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(ErrorCode.INTERNAL, "internal error; it has been logged", status=500)
