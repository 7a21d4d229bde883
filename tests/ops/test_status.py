"""``dai status`` and ``dai modules``: what the runbook asked the ``nats`` CLI for, read as the operator."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig

from democratic_ai.hub import Hub
from democratic_ai.ops.cli import main
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import free_port
from democratic_ai.ops.status import table
from democratic_ai.sdk import CallError, Client

from support.modules import Echo
from support.names import unique
from support.projections import caught_up
from support.waiting import eventually

pytestmark = pytest.mark.usefixtures("nats_server")


@pytest.fixture
def operator_env(nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in nats_server.environment("operator").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAI_BUS_CREDENTIAL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)


async def _dai(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_status_shows_streams_consumers_modules_and_projections(
    nc: NATS,
    hub: Hub,
    pool: asyncpg.Pool,
    projections: None,
    database_url: str,
    operator_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    js = nc.jetstream()
    # A stream of its own with five messages, and a consumer that took three of them without acknowledging.
    stream = unique("STATUS").upper().replace("-", "_")
    await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
    for i in range(5):
        await js.publish(f"{stream.lower()}.event", f"event {i}".encode())
    await js.add_consumer(stream, ConsumerConfig(durable_name="reader", ack_policy=AckPolicy.EXPLICIT, ack_wait=60))
    reader = await js.pull_subscribe_bind("reader", stream=stream)
    assert len(await reader.fetch(3, timeout=5)) == 3  # delivered, not acknowledged
    # A forged IDENTITY event: the identity projection quarantines it.
    tenant = unique("forged")
    await js.publish(f"iam.{tenant}.tenant.{tenant}", b"not json")
    await caught_up(nc, pool, "identity")
    quarantined = await pool.fetchval("SELECT count(*) FROM projection_dead_letters WHERE projection = 'identity'")
    assert quarantined >= 1
    # A module with one instance, two calls served, one of them failed.
    module_class = type("StatusEcho", (Echo,), {"module_id": unique("status-echo")})
    module = module_class()
    await module.start(nc)
    try:
        await eventually(
            lambda: any(b.instance_id == module.instance_id for b in hub.presence.instances()),
            "the hub to hear the module",
            timeout=10.0,
            interval=0.02,
        )
        client = Client(nc)
        await client.call("test.echo", {"text": "hi"}, target_module_id=module.module_id)
        with pytest.raises(CallError):
            await client.call("test.echo", {"fail": True}, target_module_id=module.module_id)

        monkeypatch.setenv("DATABASE_URL", database_url)
        code, out, err = await _dai(capsys, "status", "--json")
        assert code == 0, err
        document = json.loads(out)
        human_code, human, _ = await _dai(capsys, "status")
        modules_code, modules_json, _ = await _dai(capsys, "modules", "--json")
        _, modules_human, _ = await _dai(capsys, "modules")
    finally:
        await module.stop()
        await reader.unsubscribe()
        await js.delete_stream(stream)

    assert document["schema"] == "dai.status/1" and document["nats"]["jetstream"] is True
    streams = {s["name"]: s for s in document["streams"]}
    mine = streams[stream]
    assert (mine["messages"], mine["first_seq"], mine["last_seq"], mine["consumers"]) == (5, 1, 5, 1)
    assert mine["bytes"] > 0 and mine["first_time"] <= mine["last_time"] and mine["last_time"].endswith("Z")
    assert {"MCP", "USAGE", "IDENTITY", "BILLING", "REGISTRY", "RATELIMIT"} <= set(streams)

    [consumer] = [c for c in document["consumers"] if c["stream"] == stream]
    assert (
        consumer["name"],
        consumer["durable"],
        consumer["num_pending"],
        consumer["num_ack_pending"],
        consumer["lag"],
    ) == ("reader", True, 2, 3, 5)

    [entry] = [m for m in document["modules"] if m["module_id"] == module.module_id]
    [instance] = entry["instances"]
    assert instance["instance_id"] == module.instance_id and instance["heartbeat"] and instance["micro"]
    assert instance["capabilities"] == ["test.echo"] and instance["in_flight"] == 0
    assert (entry["num_requests"], entry["num_errors"]) == (2, 1) == (instance["num_requests"], instance["num_errors"])
    direct = next(e for e in instance["endpoints"] if e["name"] == "test_echo-direct")
    assert (direct["num_requests"], direct["num_errors"], direct["queue_group"]) == (2, 1, module.module_id)
    assert direct["last_error"] and direct["average_processing_time_ns"] > 0
    assert document["hub"]["answered"] is True and document["hub"]["error"] is None

    projections = {p["name"]: p for p in document["projections"]}
    assert set(projections) == {"registry", "identity", "usage", "billing", "calls"}
    assert projections["identity"]["quarantined"] == quarantined
    assert projections["identity"]["lag_events"] == 0 and projections["identity"]["stream"] == "IDENTITY"
    assert document["unavailable"] == {}

    # The same in aligned tables.
    assert human_code == 0
    lines = human.splitlines()
    row = next(line.split() for line in lines if line.startswith(stream + " "))
    assert row[:2] == [stream, "5"] and row[-1] == "1"
    consumer_row = next(line.split() for line in lines if line.startswith(stream + " ") and "reader" in line)
    assert consumer_row[:6] == [stream, "reader", "durable", "2", "3", "5"]
    instance_row = next(line.split() for line in lines if module.instance_id in line)
    assert instance_row[0] == module.module_id and "live" in instance_row
    identity_row = next(line.split() for line in lines if line.startswith("identity "))
    assert identity_row[-1] == str(quarantined)
    for heading in ("STREAMS", "CONSUMERS", "MODULES", "PROJECTIONS"):
        assert any(line.startswith(heading) for line in lines)

    # dai modules: the modules part alone, with each endpoint.
    assert modules_code == 0
    only = json.loads(modules_json)
    assert set(only) == {"schema", "at", "nats", "modules", "hub", "unavailable"}
    assert any(m["module_id"] == module.module_id for m in only["modules"])
    endpoint_row = next(line.split() for line in modules_human.splitlines() if "test_echo-direct" in line)
    assert endpoint_row[:3] == [module.module_id, module.instance_id, "test_echo-direct"]
    assert endpoint_row[5:7] == ["2", "1"]


async def test_projections_status_json(
    nc: NATS,
    pool: asyncpg.Pool,
    database_url: str,
    operator_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    code, out, err = await _dai(capsys, "projections", "status", "--json")
    assert code == 0, err
    rows = json.loads(out)["projections"]
    assert [r["name"] for r in rows] == ["registry", "identity", "usage", "billing", "calls"]
    fields = {"name", "stream", "applied", "stream_last", "lag_events", "lag_seconds", "quarantined", "partitions"}
    assert set(rows[0]) == fields and rows[0]["partitions"] == []
    usage = rows[2]["partitions"]
    assert [p["name"] for p in usage] == [f"usage.p{p:02d}" for p in range(16)] and set(usage[0]) == fields
    assert rows[2]["applied"] == min(p["applied"] for p in usage)
    assert rows[2]["lag_events"] == sum(p["lag_events"] for p in usage)


async def test_without_database_url_the_projections_part_says_so(
    nc: NATS,
    operator_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = await _dai(capsys, "status", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["projections"] is None
    assert document["unavailable"]["projections"].startswith("DATABASE_URL is not set")
    assert "MCP" in {s["name"] for s in document["streams"]}
    code, out, _ = await _dai(capsys, "status")
    lines = out.splitlines()
    assert code == 0
    assert lines[lines.index("PROJECTIONS") + 1].strip().startswith("DATABASE_URL is not set")

    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/dai")  # nobody listens
    code, out, err = await _dai(capsys, "status", "--json")
    assert code == 0, err
    assert json.loads(out)["unavailable"]["projections"].startswith("cannot reach PostgreSQL at DATABASE_URL: ")


def test_unreachable_nats_is_one_line(tmp_path: object) -> None:
    env = {**os.environ, "NATS_URL": "nats://127.0.0.1:1", "DAI_BUS_CREDENTIAL": "dai-role.operator.x"}
    for command in ("status", "modules"):
        done = subprocess.run(
            [sys.executable, "-m", "democratic_ai.ops.cli", command],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 1 and done.stdout == ""
        [line] = done.stderr.strip().splitlines()
        assert line.startswith("dai: cannot reach NATS at nats://127.0.0.1:1: ")


async def test_a_credential_without_the_permissions_is_one_line(nc: NATS, nats_server: NatsServer) -> None:
    env = {**os.environ, **nats_server.environment("gateway")}
    env.pop("DAI_BUS_CREDENTIAL", None)
    for command, subject in (("status", "$js.api.stream.list"), ("modules", "hub.modules")):
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "democratic_ai.ops.cli", command],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 1 and done.stdout == ""
        [line] = done.stderr.strip().splitlines()
        assert line.startswith("dai: NATS refused ") and subject in line.lower()
        assert "DAI_BUS_CREDENTIAL_FILE=<data-dir>/credentials/operator.credential" in line


def test_tables_align_numbers_right() -> None:
    assert table(("NAME", "COUNT"), [("a", 5), ("longer", 123)], right=(1,)) == [
        "NAME    COUNT",
        "a           5",
        "longer    123",
    ]
