"""The operators' read API (super admins): streams, live instances, projections and their quarantine.

What ``dai status`` shows an operator at a terminal, over HTTP for the console's Operations
page. Everything needs ``ops:read`` (retrying a quarantined event ``ops:retry``); only super
admins hold them (``*``), so anyone else gets 403 ``FORBIDDEN``.

* **streams** — the platform's streams (:data:`~democratic_ai.contracts.STREAMS`) with their
  messages, bytes, sequences and consumers, from JetStream's stream info.
* **instances** — every live module instance, from the presence index (:mod:`.instances`).
* **projections** — positions, lag and quarantined events, and a retry of one event. The
  gateway may not read the quarantine nor write a read model (it connects as ``dai_app``), so it
  asks the projections worker over NATS (:mod:`democratic_ai.contracts.ops`), which answers
  with the functions ``dai projections status`` and ``dai projections retry`` use. No worker
  answering is 503 ``NOT_READY``, naming what to start.
"""

from __future__ import annotations

from datetime import datetime

import msgspec
import nats.errors
from aiohttp import web

from democratic_ai.contracts import STREAMS, ErrorCode
from democratic_ai.contracts.ops import (
    PROJECTIONS_RETRY,
    PROJECTIONS_STATUS,
    OpsAnswer,
    ProjectionsReport,
    RetryOutcome,
    RetryRequest,
)

from .auth import require
from .bodies import respond
from .errors import ApiError
from .instances import LiveInstance, live_instances
from .openapi import operation
from .state import NC

__all__ = ["OPS_READ", "OPS_RETRY", "add_ops_routes"]

OPS_READ = "ops:read"
OPS_RETRY = "ops:retry"
ASK_TIMEOUT = 10.0  # a status counts each projection's pending events on the server: a few requests each

_answer = msgspec.json.Decoder(OpsAnswer).decode
_NO_WORKER = "no projections worker answers (start `dai projections run`, or `dai up`)"


class StreamState(msgspec.Struct):
    name: str
    subjects: list[str]
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    first_time: datetime | None
    last_time: datetime | None
    consumers: int


class StreamList(msgspec.Struct):
    streams: list[StreamState]


class InstanceList(msgspec.Struct):
    instances: list[LiveInstance]


@operation("The platform's streams: messages, bytes, sequences and consumers (super admin).", {200: StreamList})
async def list_streams(request: web.Request) -> web.Response:
    require(request, OPS_READ)
    streams = []
    for config in STREAMS:
        name = config.name or ""
        try:
            # The API's own answer, as `dai status` reads it: nats-py's StreamState drops the times.
            msg = await request.app[NC].request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=ASK_TIMEOUT)
            info = _stream_info(msg.data)
        except (TimeoutError, nats.errors.Error, msgspec.DecodeError) as exc:
            raise ApiError(ErrorCode.NOT_READY, f"JetStream did not answer for {name}: {exc}") from None
        if info.error is not None:
            if info.error.code == 404:
                continue  # not created yet (`dai up` creates them): nothing to show
            raise ApiError(ErrorCode.NOT_READY, f"JetStream refused {name}: {info.error.description}")
        state = info.state
        streams.append(
            StreamState(
                name=name,
                subjects=info.config.subjects,
                messages=state.messages,
                bytes=state.bytes,
                first_seq=state.first_seq,
                last_seq=state.last_seq,
                first_time=_time(state.first_ts),
                last_time=_time(state.last_ts),
                consumers=state.consumer_count,
            )
        )
    return respond(StreamList(streams))


class _ApiError(msgspec.Struct):
    code: int = 0
    description: str = ""


class _Config(msgspec.Struct):
    subjects: list[str] = []


class _State(msgspec.Struct):
    messages: int = 0
    bytes: int = 0
    first_seq: int = 0
    last_seq: int = 0
    first_ts: str = ""
    last_ts: str = ""
    consumer_count: int = 0


class _StreamInfo(msgspec.Struct):
    """``$JS.API.STREAM.INFO.<name>``'s answer, the fields shown (unknown ones ignored)."""

    config: _Config = msgspec.field(default_factory=_Config)
    state: _State = msgspec.field(default_factory=_State)
    error: _ApiError | None = None


_stream_info = msgspec.json.Decoder(_StreamInfo).decode


def _time(text: str) -> datetime | None:
    """A server time stamp (RFC 3339 with nanoseconds) as a datetime; None for Go's zero time."""
    if not text or text.startswith("0001-01-01"):
        return None
    head, _, rest = text.rstrip("Z").partition(".")
    digits = "".join(c for c in rest if c.isdigit())[:6]
    try:
        return datetime.fromisoformat(f"{head}.{digits:0<6}+00:00" if digits else f"{head}+00:00")
    except ValueError:
        return None


@operation("Every live module instance, of every tenant's modules (super admin).", {200: InstanceList})
async def list_instances(request: web.Request) -> web.Response:
    require(request, OPS_READ)
    return respond(InstanceList(live_instances(request.app)))


async def _ask(request: web.Request, subject: str, body: bytes) -> OpsAnswer:
    """The projections worker's answer, or the refusal it stands for."""
    try:
        msg = await request.app[NC].request(subject, body, timeout=ASK_TIMEOUT)
    except nats.errors.NoRespondersError:
        raise ApiError(ErrorCode.NOT_READY, _NO_WORKER) from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise ApiError(
            ErrorCode.NOT_READY, f"the projections worker did not answer within {ASK_TIMEOUT:g} s; retry"
        ) from None
    try:
        answer = _answer(msg.data)
    except msgspec.DecodeError as exc:
        raise ApiError(ErrorCode.NOT_READY, f"the projections worker answered something else: {exc}") from None
    if answer.error is not None:
        try:
            code = ErrorCode(answer.error.code)
        except ValueError:
            code = ErrorCode.NOT_READY
        raise ApiError(code, answer.error.message)
    return answer


@operation(
    "Every projection's position and lag, and the quarantined events (oldest first, without payloads; super admin).",
    {200: ProjectionsReport},
    description="Answered by the projections worker (503 NOT_READY when none runs), as `dai projections"
    " status` counts it.",
)
async def projections_report(request: web.Request) -> web.Response:
    require(request, OPS_READ)
    answer = await _ask(request, PROJECTIONS_STATUS, b"")
    if answer.report is None:
        raise ApiError(ErrorCode.NOT_READY, "the projections worker sent no report")
    return respond(answer.report)


@operation(
    "Apply one quarantined event again (after a fix): it leaves the quarantine if it applies now, else it"
    " stays with its new error (super admin). 404 if the projection has no quarantined event there.",
    {200: RetryOutcome},
)
async def retry_quarantined(request: web.Request) -> web.Response:
    require(request, OPS_RETRY)
    name, raw = request.match_info["projection"], request.match_info["sequence"]
    if not raw.isdigit() or not 0 < int(raw) < 2**63:
        raise ApiError(
            ErrorCode.VALIDATION_FAILED, "the sequence is a stream sequence: a positive integer", {"sequence": raw}
        )
    body = msgspec.json.encode(RetryRequest(projection=name, sequence=int(raw)))
    answer = await _ask(request, PROJECTIONS_RETRY, body)
    if answer.retried is None:
        raise ApiError(ErrorCode.NOT_READY, "the projections worker sent no outcome")
    return respond(answer.retried)


def add_ops_routes(app: web.Application) -> None:
    app.router.add_get("/v1/ops/streams", list_streams)
    app.router.add_get("/v1/ops/instances", list_instances)
    app.router.add_get("/v1/ops/projections", projections_report)
    app.router.add_post("/v1/ops/projections/{projection}/quarantine/{sequence}/retry", retry_quarantined)
