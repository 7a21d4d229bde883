"""``dai replay``: filters select on the server, every stream decodes to JSON, errors are one line and exit 2."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts import ErrorCode, error_reply, new_request, registry_events, reply
from democratic_ai.ops.cli import main
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.progress import Progress
from democratic_ai.ops.replay import ReplayError, ReplayOptions, plan_replay, replay
from democratic_ai.ops.timespec import InvalidTime, parse_time

from support.names import unique
from support.waiting import eventually


async def _replay(nc: NATS, **options: object) -> list[dict]:
    out = io.BytesIO()
    plan = await plan_replay(nc.jetstream(), ReplayOptions(**options))  # type: ignore[arg-type]
    count = await replay(nc.jetstream(), plan, out, batch=2)  # batches of 2: the window crosses batches
    lines = out.getvalue().decode().splitlines()
    assert count == len(lines)
    return [json.loads(line) for line in lines]


async def _record_calls(nc: NATS, tenant: str) -> None:
    """Requests, a response and an error of ``tenant`` in MCP, published as the call path does (core NATS)."""
    before = (await nc.jetstream().stream_info("MCP")).state.last_seq
    summarize = new_request("text.summarize", b'{"text": "hello"}', tenant_id=tenant, source_module_id="gateway")
    upscale = new_request(
        "image.upscale", b"\x89PNG", tenant_id=tenant, source_module_id="gateway", content_type="image/png"
    )
    answer = reply(summarize, b'{"summary": "hi"}', source_module_id="text-tools")
    failure = error_reply(
        summarize, ErrorCode.VALIDATION_FAILED, "too long", source_module_id="text-tools", details={"path": "$.text"}
    )
    for subject, message in (
        (f"mcp.req.{tenant}.text.summarize", summarize),
        (f"mcp.req.{tenant}.image.upscale", upscale),
        (f"mcp.res.{tenant}.text.summarize", answer),
        (f"mcp.res.{tenant}.text.summarize", failure),
    ):
        await nc.publish(subject, message.SerializeToString())
    await nc.flush()

    async def stored() -> bool:  # MCP records are core-NATS publishes: wait until the stream stored them
        return (await nc.jetstream().stream_info("MCP")).state.last_seq >= before + 4

    await eventually(stored, "MCP to store the records", timeout=2.0)


async def test_mcp_events_of_one_tenant_decode_to_json(nc: NATS) -> None:
    tenant, other = unique("acme"), unique("beta")
    await _record_calls(nc, tenant)
    await _record_calls(nc, other)

    records = await _replay(nc, stream="MCP", tenant=tenant)
    assert [r["type"] for r in records] == ["REQUEST", "REQUEST", "RESPONSE", "ERROR"]
    assert all(r["subject"].split(".")[2] == tenant and r["stream"] == "MCP" for r in records)
    assert records[0]["event"]["payload"] == {"text": "hello"}
    assert records[0]["event"]["context"]["tenant_id"] == tenant
    assert records[1]["event"]["payload_base64"] == "iVBORw=="
    assert records[2]["event"]["payload"] == {"summary": "hi"}
    assert records[3]["event"]["error"] == {
        "code": "VALIDATION_FAILED",
        "message": "too long",
        "details": {"path": "$.text"},
    }
    assert records[0]["seq"] < records[1]["seq"] < records[2]["seq"] < records[3]["seq"]
    assert datetime.fromisoformat(records[0]["time"]).tzinfo is not None

    summarize = await _replay(nc, stream="MCP", tenant=tenant, capability="text.summarize")
    assert [r["type"] for r in summarize] == ["REQUEST", "RESPONSE", "ERROR"]
    requests = await _replay(nc, stream="MCP", subject=f"mcp.req.{tenant}.>")
    assert [r["event"]["action"] for r in requests] == ["text.summarize", "image.upscale"]
    every_tenant = await _replay(nc, stream="MCP", capability="image.upscale", from_seq=records[0]["seq"])
    assert {r["subject"].split(".")[2] for r in every_tenant} == {tenant, other}


async def test_windows_by_sequence_and_by_time(nc: NATS) -> None:
    tenant = unique("acme")
    js = nc.jetstream()
    sequences, instants = [], []
    for n in range(4):
        sequences.append(
            (await js.publish(f"usage.{tenant}.api_calls", json.dumps({"type": "usage.recorded", "n": n}).encode())).seq
        )
        await asyncio.sleep(0.02)  # time passes on both sides of each instant, so that it falls between events
        instants.append(datetime.now(UTC))
        await asyncio.sleep(0.02)

    by_seq = await _replay(nc, stream="USAGE", tenant=tenant, from_seq=sequences[1], to_seq=sequences[2])
    assert [r["event"]["n"] for r in by_seq] == [1, 2] and by_seq[0]["type"] == "usage.recorded"
    by_time = await _replay(nc, stream="USAGE", tenant=tenant, since=instants[0], until=instants[2])
    assert [r["event"]["n"] for r in by_time] == [1, 2]
    assert await _replay(nc, stream="USAGE", tenant=tenant, since=datetime.now(UTC)) == []
    assert await _replay(nc, stream="USAGE", tenant=tenant, until=datetime(2000, 1, 1, tzinfo=UTC)) == []


async def test_registry_events_are_upcast_and_csv_keeps_one_row_per_event(nc: NATS) -> None:
    module_id = unique("old")
    manifest = {"module_id": module_id, "capabilities": [{"action": "x.y"}]}
    v1 = {"type": "module.registered", "v": 1, "manifest": manifest, "digest": "ab" * 32, "at": "2024-01-02T03:04:05Z"}
    await nc.jetstream().publish(
        f"registry.{module_id}.registered", json.dumps(v1).encode(), headers={"Nats-Msg-Id": module_id}
    )

    [record] = await _replay(nc, stream="REGISTRY", subject=f"registry.{module_id}.>")
    assert record["type"] == "module.registered"
    # Upcast to today's version (v1 → v2 names the digest's algorithm; later versions add fields).
    assert (record["event"]["v"], record["event"]["digest"]) == (registry_events.VERSION, "sha256:" + "ab" * 32)
    assert record["headers"] == {"Nats-Msg-Id": module_id}

    out = io.BytesIO()
    plan = await plan_replay(
        nc.jetstream(), ReplayOptions(stream="REGISTRY", subject=f"registry.{module_id}.>", format="csv")
    )
    assert await replay(nc.jetstream(), plan, out) == 1
    rows = list(csv.DictReader(io.StringIO(out.getvalue().decode())))
    assert [(r["subject"], r["type"]) for r in rows] == [(f"registry.{module_id}.registered", "module.registered")]
    assert json.loads(rows[0]["event"])["manifest"]["module_id"] == module_id

    empty = io.BytesIO()
    none = await plan_replay(
        nc.jetstream(), ReplayOptions(stream="REGISTRY", subject="registry.nobody-here.>", format="csv")
    )
    assert await replay(nc.jetstream(), none, empty) == 0
    assert empty.getvalue().decode() == "stream,seq,time,subject,type,event,headers\n"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stream": "NOPE"}, "unknown stream 'NOPE'; streams: .*MCP, .*REGISTRY"),
        ({"stream": "USAGE", "capability": "text.summarize"}, "USAGE subjects carry no capability"),
        ({"stream": "REGISTRY", "tenant": "acme"}, "REGISTRY subjects name modules"),
        ({"stream": "MCP", "tenant": "Not Valid"}, "tenant 'Not Valid' is not a valid name"),
        ({"stream": "MCP", "subject": "usage.>"}, "matches no subject of MCP"),
    ],
)
async def test_filters_that_cannot_select_anything_are_refused(nc: NATS, options: dict, message: str) -> None:
    with pytest.raises(ReplayError, match=message):
        await plan_replay(nc.jetstream(), ReplayOptions(**options))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"subject": "mcp.>.x"}, "is not a NATS subject filter"),
        ({"subject": "mcp..req"}, "is not a NATS subject filter"),
        ({"subject": "mcp.req.>", "tenant": "acme"}, "either --subject or --tenant"),
        ({"from_seq": 5, "since": datetime.now(UTC)}, "either --since or --from-seq"),
        ({"from_seq": 9, "to_seq": 3}, "--from-seq 9 is after --to-seq 3"),
        ({"from_seq": 0}, "--from-seq must be 1 or more"),
        ({"format": "xml"}, "unknown format 'xml'"),
    ],
)
def test_inconsistent_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ReplayError, match=message):
        ReplayOptions(stream="MCP", **options)


def test_times_are_iso_8601_in_utc_or_ages() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_time("2024-05-01T14:00:00+02:00") == now
    assert parse_time("2024-05-01T12:00") == now
    assert parse_time("2024-05-01T12:00:00Z") == now
    assert parse_time("90m", now=now) == datetime(2024, 5, 1, 10, 30, tzinfo=UTC)
    with pytest.raises(InvalidTime, match="'yesterday' is not a time"):
        parse_time("yesterday")


def test_the_progress_bar_draws_only_where_asked() -> None:
    shown, hidden = io.StringIO(), io.StringIO()
    for stream, enabled in ((shown, True), (hidden, None)):
        bar = Progress("replay MCP", stream=stream, enabled=enabled)
        bar.start(4)
        bar.advance(4)
        bar.finish()
    assert "4/4" in shown.getvalue() and "100%" in shown.getvalue() and "events/s" in shown.getvalue()
    assert hidden.getvalue() == ""  # a StringIO is not a terminal


def test_the_progress_bar_counts_bytes_for_a_backup() -> None:
    shown = io.StringIO()
    bar = Progress("backup MCP", stream=shown, enabled=True, unit="bytes")
    bar.start(8192)  # the stream's size: its compressed archive falls short of it
    bar.advance(4096)
    bar.finish()
    drawn = shown.getvalue().split("\r")
    assert drawn[1].startswith("backup MCP [") and "0/8,192" in drawn[1]
    assert "4,096/4,096" in drawn[-1] and "100%" in drawn[-1] and "bytes/s" in drawn[-1]
    assert "events" not in shown.getvalue()


async def test_the_command_writes_a_file_and_fails_in_one_line(
    nc: NATS, nats_server: NatsServer, tmp_path: Path
) -> None:
    tenant = unique("acme")
    await _record_calls(nc, tenant)
    env = {**os.environ, **nats_server.environment("operator")}
    out = tmp_path / "calls.jsonl"
    command = [sys.executable, "-m", "democratic_ai.ops.cli", "replay", "MCP", "--tenant", tenant, "--out", str(out)]
    done = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["type"] for line in out.read_text().splitlines()] == [
        "REQUEST",
        "REQUEST",
        "RESPONSE",
        "ERROR",
    ]
    assert done.stderr.strip() == "replayed 4 events from MCP"  # no progress bar: stderr is not a terminal

    out.write_text("keep me")
    bad = await asyncio.to_thread(
        subprocess.run, [*command[:4], "NOPE", "--out", str(out)], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    [line] = bad.stderr.strip().splitlines()
    assert line.startswith("dai: unknown stream 'NOPE'; streams: ") and "MCP" in line
    assert out.read_text() == "keep me"


async def test_stream_names_are_case_insensitive(nc: NATS, nats_server: NatsServer) -> None:
    tenant = unique("acme")
    await _record_calls(nc, tenant)
    assert [r["stream"] for r in await _replay(nc, stream="mcp", tenant=tenant)] == ["MCP"] * 4
    env = {**os.environ, **nats_server.environment("operator")}
    command = [sys.executable, "-m", "democratic_ai.ops.cli", "replay", "Mcp", "--tenant", tenant]
    done = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 4 and done.stderr.strip() == "replayed 4 events from MCP"
    with pytest.raises(ReplayError, match=r"^'m\.cp' is not a stream name"):
        await plan_replay(nc.jetstream(), ReplayOptions(stream="m.cp"))


def test_unreachable_nats_is_one_line_and_quick(tmp_path: Path) -> None:
    env = {**os.environ, "NATS_URL": "nats://127.0.0.1:1", "DAI_BUS_CREDENTIAL": "dai-role.operator.x"}
    command = [sys.executable, "-m", "democratic_ai.ops.cli", "replay", "MCP"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.strip() == "dai: cannot reach NATS at nats://127.0.0.1:1"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["replay", "MCP", "--from-seq", "x"],
            "dai replay: argument --from-seq: invalid int value: 'x' (see dai replay --help)",
        ),
        (["replay", "MCP", "--since", "soon"], "dai: 'soon' is not a time"),
        (["replay", "MCP", "--since", "1h", "--from-seq", "3"], "dai: give either --since or --from-seq, not both"),
    ],
)
def test_usage_errors_exit_2_in_one_line(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")  # never reached: the arguments fail first
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse exits by itself
        code = exc.code
    assert code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(message)


async def test_the_runbook_purge_removes_one_tenant_and_keeps_the_others(nc: NATS) -> None:
    """``nats stream purge MCP --subject 'mcp.*.<tenant>.>'`` is a purge with a wildcard filter."""
    gone, kept = unique("gone"), unique("kept")
    await _record_calls(nc, gone)
    await _record_calls(nc, kept)
    assert await nc.jetstream().purge_stream("MCP", subject=f"mcp.*.{gone}.>")
    assert await _replay(nc, stream="MCP", tenant=gone) == []
    assert len(await _replay(nc, stream="MCP", tenant=kept)) == 4
