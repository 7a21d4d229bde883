"""``dai replay STREAM``: the log, decoded to JSON lines or CSV, for analysts and operators.

Each event becomes one record::

    {"stream": "MCP", "seq": 42, "time": "2024-05-01T12:00:00.123456Z", "subject": "mcp.req.acme.text.summarize",
     "type": "REQUEST", "event": {…decoded…}, "headers": {…}}

Filters become a JetStream consumer's subject filter and start sequence, so the server selects
the events and the client never reads what it does not print; ``--until`` / ``--to-seq`` fix
the end before reading starts. Memory is bounded by one batch and a short prefetch whatever
the stream's size (:class:`~democratic_ai.projections.LogReader`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, BinaryIO

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from democratic_ai.projections import LogRange, LogReader, sequence_at

from .decoding import FilterError, StreamCodec, codec_for
from .progress import Progress

__all__ = ["FORMATS", "ReplayError", "ReplayOptions", "ReplayPlan", "plan_replay", "replay"]

FORMATS = ("jsonl", "csv")
CSV_COLUMNS = ("stream", "seq", "time", "subject", "type", "event", "headers")

_encode = msgspec.json.Encoder().encode


class ReplayError(ValueError):
    """A replay that cannot start: unknown stream, bad filter or window. The message is one line."""


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    stream: str
    tenant: str | None = None
    capability: str | None = None
    subject: str | None = None
    since: datetime | None = None
    from_seq: int | None = None
    until: datetime | None = None
    to_seq: int | None = None
    format: str = "jsonl"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ReplayError(f"unknown format {self.format!r}; use one of {', '.join(FORMATS)}")
        if self.subject is not None and (self.tenant is not None or self.capability is not None):
            raise ReplayError("give either --subject or --tenant/--capability, not both")
        if self.subject is not None and not _valid_subject(self.subject):
            raise ReplayError(f"{self.subject!r} is not a NATS subject filter (tokens separated by '.', '>' only last)")
        if self.since is not None and self.from_seq is not None:
            raise ReplayError("give either --since or --from-seq, not both")
        if self.until is not None and self.to_seq is not None:
            raise ReplayError("give either --until or --to-seq, not both")
        if self.from_seq is not None and self.from_seq < 1:
            raise ReplayError("--from-seq must be 1 or more: stream sequences start at 1")
        if self.to_seq is not None and self.to_seq < 0:
            raise ReplayError("--to-seq must not be negative")
        if self.from_seq is not None and self.to_seq is not None and self.from_seq > self.to_seq:
            raise ReplayError(f"--from-seq {self.from_seq} is after --to-seq {self.to_seq}")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ReplayError(f"--since {self.since.isoformat()} is after --until {self.until.isoformat()}")


def _valid_subject(subject: str) -> bool:
    tokens = subject.split(".")
    return (
        all(
            token and not any(c.isspace() for c in token) and (token in ("*", ">") or not {"*", ">"} & set(token))
            for token in tokens
        )
        and ">" not in tokens[:-1]
    )


def _overlaps(left: str, right: str) -> bool:
    """Whether some subject matches both filters."""
    a, b = left.split("."), right.split(".")
    for x, y in zip(a, b, strict=False):
        if ">" in (x, y):
            return True
        if x != y and "*" not in (x, y):
            return False
    return len(a) == len(b)


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """A checked replay: the stream exists, the filter fits its subjects, times are sequences."""

    options: ReplayOptions
    codec: StreamCodec
    window: LogRange


async def plan_replay(js: JetStreamContext, options: ReplayOptions) -> ReplayPlan:
    """Check the options against the server; raises :class:`ReplayError` before anything is written."""
    try:
        info = await js.stream_info(options.stream)
    except ValueError:  # nats-py checks the name before asking
        raise ReplayError(f"{options.stream!r} is not a stream name (no spaces, '.', '*' or '>')") from None
    except NotFoundError:
        # Stream names are matched without regard to case (`dai replay mcp`), when that is unambiguous.
        names = sorted(s.config.name for s in await js.streams_info() if s.config.name)
        same = [name for name in names if name.casefold() == options.stream.casefold()]
        if len(same) != 1:
            raise ReplayError(f"unknown stream {options.stream!r}; streams: {', '.join(names) or 'none'}") from None
        info = await js.stream_info(same[0])
        options = replace(options, stream=same[0])
    codec = codec_for(options.stream)
    try:
        subject = options.subject or codec.filter_for(options.tenant, options.capability)
    except FilterError as exc:
        raise ReplayError(str(exc)) from None
    if subject is not None and not any(_overlaps(subject, s) for s in info.config.subjects or ()):
        raise ReplayError(
            f"{subject!r} matches no subject of {options.stream} ({', '.join(info.config.subjects or ())})"
        )
    first = options.from_seq or 1
    if options.since is not None:
        first = await sequence_at(js, options.stream, options.since)
    last = options.to_seq
    if options.until is not None:
        last = await sequence_at(js, options.stream, options.until, after=True) - 1
    return ReplayPlan(options, codec, LogRange(options.stream, subject, first_seq=first, last_seq=last))


def _record(stream: str, msg: Msg, codec: StreamCodec) -> dict[str, Any]:
    metadata = msg.metadata
    kind, event = codec.decode(msg.data)
    record = {
        "stream": stream,
        "seq": metadata.sequence.stream,
        "time": metadata.timestamp.isoformat().replace("+00:00", "Z"),
        "subject": msg.subject,
        "type": kind,
        "event": event,
    }
    if msg.headers:
        record["headers"] = msg.headers
    return record


class _CsvWriter:
    """CSV with the decoded event (and headers) as compact JSON in one column each."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._buffer = io.StringIO()
        self._csv = csv.writer(self._buffer, lineterminator="\n")
        self._csv.writerow(CSV_COLUMNS)

    def write(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            headers = _encode(r["headers"]).decode() if "headers" in r else ""
            self._csv.writerow(
                (r["stream"], r["seq"], r["time"], r["subject"], r["type"], _encode(r["event"]).decode(), headers)
            )
        self._out.write(self._buffer.getvalue().encode())
        self._buffer.seek(0)
        self._buffer.truncate()


class _JsonlWriter:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def write(self, records: list[dict[str, Any]]) -> None:
        self._out.write(b"".join(_encode(r) + b"\n" for r in records))


async def replay(
    js: JetStreamContext,
    plan: ReplayPlan,
    out: BinaryIO,
    *,
    progress: Progress | None = None,
    batch: int = 1024,
) -> int:
    """Write the planned events to ``out``; returns how many."""
    stream, codec = plan.options.stream, plan.codec
    writer = _CsvWriter(out) if plan.options.format == "csv" else _JsonlWriter(out)
    written = 0
    async with LogReader(js, plan.window, batch=batch) as reader:
        if progress is not None:
            progress.start(reader.pending)
        async for messages in reader:
            writer.write([_record(stream, msg, codec) for msg in messages])
            written += len(messages)
            if progress is not None:
                progress.advance(len(messages))
    if plan.options.format == "csv" and written == 0:
        writer.write([])  # the header row alone: an empty result is still a CSV file
    if progress is not None:
        progress.finish()
    return written
