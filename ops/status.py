"""``dai status`` and ``dai modules``: what an operator asks the ``nats`` CLI for, without it.

``dai status`` reads, as the operator:

* **streams** — messages, bytes, first and last sequence and time, consumers
  (``$JS.API.STREAM.LIST``, as ``nats stream ls``);
* **consumers** — of every stream, with their lag: messages not yet delivered (``num_pending``)
  plus delivered but not yet acknowledged (``num_ack_pending``), as ``nats consumer report``;
* **modules** — every module instance, from the hub's presence (``hub.modules``) and from the
  instances' own NATS micro statistics (``$SRV.STATS``, as ``nats micro stats``): version, up
  since, calls in flight, requests, errors and latency per endpoint;
* **projections** — each one's lag and quarantined events (:func:`projection_status`, as
  ``dai projections status`` prints it), when ``DATABASE_URL`` is set.

``dai modules`` is the modules part alone. A part that cannot be read (no hub answering, no
``DATABASE_URL``, the database unreachable) is said in that part; only NATS itself being
unreachable or refusing the operator fails the command. ``--json`` prints one document of a
stable shape (:data:`SCHEMA`); numbers are raw (bytes, nanoseconds), times ISO 8601 in UTC.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from democratic_ai.contracts import subjects
from democratic_ai.contracts.bus import BusOptions, connect
from democratic_ai.contracts.presence import Heartbeat
from democratic_ai.projections import PROJECTIONS, projection_status
from democratic_ai.schemas import create_pool

__all__ = [
    "SCHEMA",
    "BusRefused",
    "BusUnreachable",
    "StatusError",
    "gather_modules",
    "gather_modules_only",
    "gather_projections",
    "gather_status",
    "modules_command",
    "render_modules",
    "render_projections",
    "render_status",
    "run",
    "status_command",
    "table",
]

SCHEMA = "dai.status/1"  # the JSON document's shape; a change that removes or renames a field bumps it

API_TIMEOUT = 5.0
HUB_TIMEOUT = 2.0
MICRO_QUIET = 0.3  # stop waiting for $SRV.STATS answers after this long without a new one …
MICRO_FIRST = 0.5  # … or this long without any when the hub knows of no instance …
MICRO_LONGEST = 2.0  # … and never longer than this

_heartbeats = msgspec.json.Decoder(list[Heartbeat]).decode
OPERATOR_HINT = "connect as the operator: export DAI_BUS_CREDENTIAL_FILE=<data-dir>/credentials/operator.credential"


class StatusError(Exception):
    """What ends ``dai status`` / ``dai modules`` (exit code 1); the message is one line.

    StatusError
    ├── BusUnreachable  no NATS at the URL, or JetStream does not answer
    └── BusRefused      the credential, or a permission it lacks
    """


class BusUnreachable(StatusError):
    """NATS cannot be reached at the URL given; the message is one line."""


class BusRefused(StatusError):
    """NATS refused the connection or a request (credential, permissions); the message is one line."""


class _Bus:
    """One operator connection that remembers what the server refused (nats-py reports a
    permissions violation to the error callback only; the request itself just times out)."""

    def __init__(self, options: BusOptions) -> None:
        self.options = options
        self.nc: NATS | None = None
        self.refusals: list[str] = []
        self._refused = asyncio.Event()

    async def __aenter__(self) -> NATS:
        last: list[str] = []

        async def on_error(error: Exception) -> None:
            text = str(error).strip() or type(error).__name__
            if "permission" in text.lower() or "authorization" in text.lower():
                self.refusals.append(text)
                self._refused.set()
            else:
                last.append(text)

        try:
            # One attempt and one retry: nats-py counts 0 as "retry for ever".
            self.nc = await connect(
                self.options,
                "dai-status",
                error_cb=on_error,
                connect_timeout=5,
                allow_reconnect=False,
                max_reconnect_attempts=1,
            )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            text = str(exc).strip() if not isinstance(exc, nats.errors.NoServersError) else ""
            if self.refusals or "authorization" in text.lower() or "authentication" in text.lower():
                why = self.refusals[-1] if self.refusals else text
                raise BusRefused(
                    f"NATS at {self.options.url} refused the connection ({why}); {OPERATOR_HINT}"
                ) from None
            why = text or (last[-1] if last else type(exc).__name__)
            raise BusUnreachable(f"cannot reach NATS at {self.options.url}: {why}") from None
        return self.nc

    async def __aexit__(self, *exc: object) -> None:
        if self.nc is not None:
            await self.nc.close()

    async def request(self, subject: str, body: bytes, timeout: float) -> Msg:
        """``nc.request``, ended at once when the server refuses it (it says so to the error
        callback only; the request itself would wait out its timeout)."""
        assert self.nc is not None
        self._refused.clear()
        asking = asyncio.ensure_future(self.nc.request(subject, body, timeout=timeout))
        refusal = asyncio.ensure_future(self._refused.wait())
        try:
            await asyncio.wait((asking, refusal), return_when=asyncio.FIRST_COMPLETED)
        finally:
            refusal.cancel()
        if not asking.done():
            asking.cancel()
            raise self.refused(subject) or BusRefused(f"NATS refused {subject}")
        return asking.result()

    def refused(self, what: str) -> BusRefused | None:
        if not self.refusals:
            return None
        return BusRefused(f"NATS refused {what}: {self.refusals[-1]}; {OPERATOR_HINT}")


async def _api(bus: _Bus, nc: NATS, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    """One JetStream API request, its JSON answer; a refusal or an API error is one line."""
    try:
        msg = await bus.request(subject, json.dumps(body).encode(), timeout=API_TIMEOUT)
    except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
        await asyncio.sleep(0.05)  # the server's -ERR for a refused publish may trail the request
        refused = bus.refused(subject)
        if refused is not None:
            raise refused from None
        raise BusUnreachable(f"JetStream did not answer {subject} (is JetStream enabled on this server?)") from None
    answer = json.loads(msg.data)
    if "error" in answer:
        error = answer["error"]
        raise BusRefused(f"JetStream refused {subject}: {error.get('description', error)}")
    return answer


async def _paged(bus: _Bus, nc: NATS, subject: str, key: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        answer = await _api(bus, nc, subject, {"offset": len(items)})
        page = answer.get(key) or []
        items.extend(page)
        if not page or len(items) >= answer.get("total", 0):
            return items


def _time(text: str | None) -> str | None:
    """A server time stamp (nanoseconds, ``Z``) as ISO 8601 to the microsecond; ``None`` for Go's zero time."""
    if not text or text.startswith("0001-01-01"):
        return None
    head, _, rest = text.partition(".")
    if not rest:
        return text
    digits = "".join(c for c in rest if c.isdigit())
    return f"{head}.{digits[:6]:0<6}Z"


def _stream(raw: dict[str, Any]) -> dict[str, Any]:
    config, state = raw.get("config", {}), raw.get("state", {})
    return {
        "name": config.get("name"),
        "subjects": config.get("subjects") or [],
        "messages": state.get("messages", 0),
        "bytes": state.get("bytes", 0),
        "first_seq": state.get("first_seq", 0),
        "last_seq": state.get("last_seq", 0),
        "first_time": _time(state.get("first_ts")),
        "last_time": _time(state.get("last_ts")),
        "consumers": state.get("consumer_count", 0),
    }


def _consumer(raw: dict[str, Any]) -> dict[str, Any]:
    config = raw.get("config", {})
    filters = config.get("filter_subjects") or ([config["filter_subject"]] if config.get("filter_subject") else [])
    pending, ack_pending = raw.get("num_pending", 0), raw.get("num_ack_pending", 0)
    return {
        "stream": raw.get("stream_name"),
        "name": raw.get("name"),
        "durable": bool(config.get("durable_name")),
        "filter_subjects": filters,
        "num_pending": pending,
        "num_ack_pending": ack_pending,
        "lag": pending + ack_pending,
        "num_redelivered": raw.get("num_redelivered", 0),
        "num_waiting": raw.get("num_waiting", 0),
        "delivered_seq": (raw.get("delivered") or {}).get("stream_seq", 0),
        "ack_floor_seq": (raw.get("ack_floor") or {}).get("stream_seq", 0),
        "last_active": _time((raw.get("delivered") or {}).get("last_active")),
    }


async def _streams_and_consumers(bus: _Bus, nc: NATS) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    streams = sorted(
        (_stream(s) for s in await _paged(bus, nc, "$JS.API.STREAM.LIST", "streams")), key=lambda s: s["name"] or ""
    )
    consumers: list[dict[str, Any]] = []
    for stream in streams:
        if stream["consumers"]:
            raw = await _paged(bus, nc, f"$JS.API.CONSUMER.LIST.{stream['name']}", "consumers")
            mine = sorted((_consumer(c) for c in raw), key=lambda c: (not c["durable"], -c["lag"], c["name"]))
            consumers.extend(mine)
    return streams, consumers


async def _hub_instances(bus: _Bus, nc: NATS) -> tuple[list[Heartbeat] | None, str | None]:
    try:
        msg = await bus.request(subjects.MODULES, b"", timeout=HUB_TIMEOUT)
    except nats.errors.NoRespondersError:
        return None, f"no hub answers {subjects.MODULES} (is `dai hub` running?)"
    except (TimeoutError, nats.errors.TimeoutError):
        if (refused := bus.refused(subjects.MODULES)) is not None:
            raise refused from None
        return None, f"the hub did not answer {subjects.MODULES} within {HUB_TIMEOUT:g} s"
    try:
        return _heartbeats(msg.data), None
    except msgspec.DecodeError as exc:
        return None, f"the hub's answer to {subjects.MODULES} is not a list of instances: {exc}"


async def _micro_stats(nc: NATS, expected: set[tuple[str, str]]) -> list[dict[str, Any]]:
    """Every micro service instance's ``$SRV.STATS`` answer (scatter and gather on one inbox)."""
    answers: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    async def on_answer(msg: Msg) -> None:
        try:
            document = json.loads(msg.data)
        except ValueError:
            return
        if isinstance(document, dict) and document.get("type") == "io.nats.micro.v1.stats_response":
            answers.append(document)
            arrived.set()

    inbox = nc.new_inbox()
    subscription = await nc.subscribe(inbox, cb=on_answer)
    try:
        await nc.publish("$SRV.STATS", b"", reply=inbox)
        await nc.flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MICRO_LONGEST
        while (left := deadline - loop.time()) > 0:
            seen = {(a.get("name"), a.get("id")) for a in answers}
            if expected and expected <= seen:
                wait = 0.05  # every instance the hub knows has answered: a short grace for others
            else:
                wait = MICRO_QUIET if answers else (MICRO_FIRST if not expected else MICRO_LONGEST)
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), min(wait, left))
            except TimeoutError:
                break
    finally:
        await subscription.unsubscribe()
    return answers


def _endpoint(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": raw.get("name"),
        "subject": raw.get("subject"),
        "queue_group": raw.get("queue_group"),
        "num_requests": raw.get("num_requests", 0),
        "num_errors": raw.get("num_errors", 0),
        "last_error": raw.get("last_error") or "",
        "processing_time_ns": raw.get("processing_time", 0),
        "average_processing_time_ns": raw.get("average_processing_time", 0),
    }


async def gather_modules(bus: _Bus, nc: NATS) -> dict[str, Any]:
    """The modules part: ``{"modules": [...], "hub": {...}}``."""
    beats, hub_error = await _hub_instances(bus, nc)
    expected = {(b.module_id, b.instance_id) for b in beats or ()}
    stats = await _micro_stats(nc, expected)
    if not stats and (refused := bus.refused("$SRV.STATS")) is not None:
        raise refused
    instances: dict[tuple[str, str], dict[str, Any]] = {}

    def instance(module_id: str, instance_id: str) -> dict[str, Any]:
        return instances.setdefault(
            (module_id, instance_id),
            {
                "instance_id": instance_id,
                "version": None,
                "started": None,
                "capabilities": [],
                "in_flight": None,
                "leaving": False,
                "heartbeat": False,
                "micro": False,
                "num_requests": 0,
                "num_errors": 0,
                "endpoints": [],
            },
        )

    for beat in beats or ():
        entry = instance(beat.module_id, beat.instance_id)
        entry.update(
            capabilities=sorted(beat.capabilities), in_flight=beat.in_flight, leaving=beat.leaving, heartbeat=True
        )
    for answer in stats:
        entry = instance(str(answer.get("name")), str(answer.get("id")))
        endpoints = [_endpoint(e) for e in answer.get("endpoints") or ()]
        metadata = answer.get("metadata") or {}
        entry.update(
            version=metadata.get("module_version") or answer.get("version"),
            started=_time(answer.get("started")),
            micro=True,
            endpoints=endpoints,
            num_requests=sum(e["num_requests"] for e in endpoints),
            num_errors=sum(e["num_errors"] for e in endpoints),
        )
    modules: dict[str, list[dict[str, Any]]] = {}
    for (module_id, _), entry in sorted(instances.items()):
        modules.setdefault(module_id, []).append(entry)
    return {
        "modules": [
            {
                "module_id": module_id,
                "instances": entries,
                "num_requests": sum(e["num_requests"] for e in entries),
                "num_errors": sum(e["num_errors"] for e in entries),
            }
            for module_id, entries in modules.items()
        ],
        "hub": {
            "answered": beats is not None,
            "instances": len(beats) if beats is not None else None,
            "error": hub_error,
        },
    }


async def gather_projections(nc: NATS, database_url: str | None) -> dict[str, Any]:
    """The projections part: ``{"projections": [...] or None, "error": None or why not}``."""
    if not database_url:
        return {"projections": None, "error": "DATABASE_URL is not set (dai up prints it)"}
    try:
        pool = await asyncio.wait_for(create_pool(database_url, min_size=1, max_size=2), 10)
    except (OSError, TimeoutError, asyncpg.PostgresError, ValueError) as exc:
        return {"projections": None, "error": f"cannot reach PostgreSQL at DATABASE_URL: {_one_line(exc)}"}
    try:
        rows = await projection_status(nc.jetstream(), pool, PROJECTIONS.values())
    except asyncpg.UndefinedTableError:
        return {
            "projections": None,
            "error": "this database has no read models yet (`dai projections run` or `dai up` creates them)",
        }
    except (OSError, asyncpg.PostgresError) as exc:
        return {"projections": None, "error": f"cannot read the projections: {_one_line(exc)}"}
    finally:
        await pool.close()
    return {"projections": [asdict(row) for row in rows], "error": None}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def gather_status(options: BusOptions, database_url: str | None) -> dict[str, Any]:
    bus = _Bus(options)
    async with bus as nc:
        streams, consumers = await _streams_and_consumers(bus, nc)
        modules = await gather_modules(bus, nc)
        projections = await gather_projections(nc, database_url)  # after the consumers: it makes its own
        return {
            "schema": SCHEMA,
            "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "nats": _server(options, nc),
            "streams": streams,
            "consumers": consumers,
            **modules,
            "projections": projections["projections"],
            "unavailable": {
                k: v for k, v in (("hub", modules["hub"]["error"]), ("projections", projections["error"])) if v
            },
        }


def _server(options: BusOptions, nc: NATS) -> dict[str, Any]:
    info = nc._server_info  # noqa: SLF001 - nats-py keeps the server's INFO here and nowhere public
    return {
        "url": options.url,
        "server_name": info.get("server_name"),
        "version": info.get("version"),
        "jetstream": bool(info.get("jetstream")),
    }


async def gather_modules_only(options: BusOptions) -> dict[str, Any]:
    bus = _Bus(options)
    async with bus as nc:
        modules = await gather_modules(bus, nc)
        return {
            "schema": SCHEMA,
            "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "nats": _server(options, nc),
            **modules,
            "unavailable": {"hub": modules["hub"]["error"]} if modules["hub"]["error"] else {},
        }


# --- Human output ------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], right: Iterable[int] = ()) -> list[str]:
    """Aligned columns, two spaces apart; columns in ``right`` (numbers) are right-aligned."""
    cells = [[str(h) for h in headers], *([("" if v is None else str(v)) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    align = set(right)
    lines = []
    for row in cells:
        parts = [v.rjust(w) if i in align else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
    return lines


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _when(iso: str | None) -> str:
    return iso[:19].replace("T", " ") + "Z" if iso else "-"


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f}"


def render_projections(rows: list[dict[str, Any]] | None, error: str | None = None) -> list[str]:
    if rows is None:
        return [f"  {error}"]
    lines = table(
        ("PROJECTION", "STREAM", "APPLIED", "STREAM LAST", "LAG EVENTS", "LAG SECONDS", "QUARANTINED"),
        [
            (
                r["name"],
                r["stream"],
                r["applied"],
                r["stream_last"],
                r["lag_events"],
                f"{r['lag_seconds']:.3f}",
                r["quarantined"],
            )
            for r in rows
        ],
        right=range(2, 7),
    )
    partitions = [p for r in rows for p in r.get("partitions", ())]
    if partitions:  # below the projections, whose table keeps one line each
        lines += table(
            ("PARTITION", "APPLIED", "LAG EVENTS", "LAG SECONDS"),
            [(p["name"], p["applied"], p["lag_events"], f"{p['lag_seconds']:.3f}") for p in partitions],
            right=range(1, 4),
        )
    quarantined = [r["name"] for r in rows if r["quarantined"]]
    if quarantined:
        lines.append(
            f"quarantined events: see projection_dead_letters; after a fix, `dai projections retry NAME`"
            f" ({', '.join(quarantined)})"
        )
    return lines


def render_modules(document: dict[str, Any], endpoints: bool) -> list[str]:
    hub = document["hub"]
    count = hub["instances"]
    plural = "" if count == 1 else "s"
    lines = [f"  hub: {count} live instance{plural}" if hub["answered"] else f"  hub: {hub['error']}"]
    if not document["modules"]:
        return [*lines, "  no module instance answers $SRV.STATS or heartbeats"]
    rows = []
    for module in document["modules"]:
        for i in module["instances"]:
            state = "leaving" if i["leaving"] else ("live" if i["heartbeat"] else "no heartbeat")
            if not i["micro"]:
                state += ", no $SRV.STATS"
            rows.append(
                (
                    module["module_id"],
                    i["instance_id"],
                    i["version"] or "-",
                    _when(i["started"]),
                    "-" if i["in_flight"] is None else i["in_flight"],
                    i["num_requests"],
                    i["num_errors"],
                    state,
                )
            )
    lines += table(
        ("MODULE", "INSTANCE", "VERSION", "UP SINCE", "IN FLIGHT", "REQUESTS", "ERRORS", "STATE"), rows, right=(4, 5, 6)
    )
    if endpoints:
        endpoint_rows = [
            (
                module["module_id"],
                i["instance_id"],
                e["name"],
                e["subject"],
                e["queue_group"],
                e["num_requests"],
                e["num_errors"],
                _ms(e["average_processing_time_ns"]),
                e["last_error"] or "-",
            )
            for module in document["modules"]
            for i in module["instances"]
            for e in i["endpoints"]
        ]
        lines += [
            "",
            *table(
                (
                    "MODULE",
                    "INSTANCE",
                    "ENDPOINT",
                    "SUBJECT",
                    "QUEUE GROUP",
                    "REQUESTS",
                    "ERRORS",
                    "AVG MS",
                    "LAST ERROR",
                ),
                endpoint_rows,
                right=(5, 6, 7),
            ),
        ]
    return lines


def _heading(document: dict[str, Any]) -> str:
    nats_info = document["nats"]
    return f"NATS {nats_info['url']} (server {nats_info['server_name']}, nats-server {nats_info['version']})"


def render_status(document: dict[str, Any]) -> str:
    lines = [_heading(document), "", "STREAMS"]
    lines += table(
        ("STREAM", "MESSAGES", "BYTES", "FIRST SEQ", "LAST SEQ", "FIRST", "LAST", "CONSUMERS"),
        [
            (
                s["name"],
                s["messages"],
                _bytes(s["bytes"]),
                s["first_seq"],
                s["last_seq"],
                _when(s["first_time"]),
                _when(s["last_time"]),
                s["consumers"],
            )
            for s in document["streams"]
        ],
        right=(1, 2, 3, 4, 7),
    )
    lines += ["", "CONSUMERS  (lag = pending + ack pending)"]
    if document["consumers"]:
        lines += table(
            ("STREAM", "CONSUMER", "KIND", "PENDING", "ACK PENDING", "LAG", "REDELIVERED", "LAST ACTIVE"),
            [
                (
                    c["stream"],
                    c["name"],
                    "durable" if c["durable"] else "ephemeral",
                    c["num_pending"],
                    c["num_ack_pending"],
                    c["lag"],
                    c["num_redelivered"],
                    _when(c["last_active"]),
                )
                for c in document["consumers"]
            ],
            right=(3, 4, 5, 6),
        )
    else:
        lines.append("  none")
    lines += ["", "MODULES", *render_modules(document, endpoints=False)]
    projections = render_projections(document["projections"], document["unavailable"].get("projections"))
    lines += ["", "PROJECTIONS", *projections]
    return "\n".join(lines)


async def status_command(options: BusOptions, database_url: str | None, as_json: bool) -> int:
    document = await gather_status(options, database_url)
    print(json.dumps(document, indent=2) if as_json else render_status(document))
    return 0


async def modules_command(options: BusOptions, as_json: bool) -> int:
    document = await gather_modules_only(options)
    human = "\n".join([_heading(document), "", "MODULES", *render_modules(document, endpoints=True)])
    print(json.dumps(document, indent=2) if as_json else human)
    return 0


def run(args: argparse.Namespace, bus: Callable[[], BusOptions]) -> int:
    """``dai status`` or ``dai modules``; NATS unreachable or refusing is one ``dai:`` line, exit 1."""
    options = bus()
    command = (
        status_command(options, os.environ.get("DATABASE_URL"), args.json)
        if args.command == "status"
        else modules_command(options, args.json)
    )
    try:
        return asyncio.run(command)
    except StatusError as exc:
        print(f"dai: {exc}", file=sys.stderr)
        return 1
