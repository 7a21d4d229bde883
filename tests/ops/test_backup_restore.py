"""``dai backup`` and ``dai restore``, as an operator runs them, against servers of this module's own.

The whole story: a platform with a tenant, calls and a closed invoice is backed up (the README's
block), its log is lost — a new server with an empty store, and a new database — and the README's
restore brings it back: every stream with the same messages at the same sequences, read models
equal to a rebuild, the tenant's token still signed by a known key, a new call served and the
invoice read back as before. Then the refusals, each of which must leave the server as it was.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS

from democratic_ai.contracts import ensure_streams
from democratic_ai.contracts.bus import connect
from democratic_ai.contracts.envelope import Meta
from democratic_ai.ops.backup import MANIFEST, stream_names
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import free_port
from democratic_ai.ops.postgres_server import PostgresServer
from democratic_ai.ops.snapshots import (
    RESTORE_CHUNK,
    JetStreamApiError,
    SnapshotError,
    api,
    restore_stream,
    snapshot_stream,
)
from democratic_ai.projections import PROJECTIONS
from democratic_ai.schemas import app_dsn
from democratic_ai.services.billing import BillingConfig, BillingService, PostgresUsageTotals
from democratic_ai.services.gateway import GatewayConfig, create_app
from democratic_ai.services.gateway.app import runner_for
from democratic_ai.services.identity import KeyEncryptionKey
from democratic_ai.services.plans import load_plans

from support.billing import new_billing_tenant
from support.calls import ended_calls
from support.client import http
from support.databases import throwaway_database
from support.gateway import TEST_METERING, Gateway, StartGateway, gateway_ready, issue_key
from support.modules import Echo
from support.paths import REPO
from support.projections import caught_up
from support.readme import run_script, section_scripts
from support.waiting import eventually

pytestmark = pytest.mark.slow

JAN_START = datetime(2024, 12, 31, 15, 0, tzinfo=UTC)  # 2025-01-01 00:00 in Tokyo, the plan's start
BILLING = BillingConfig(close_grace_seconds=0)
NO_MESSAGE = 10037  # JetStream's error code for a sequence that holds no message (deleted, or past the end)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A server of this test's own (the fixtures that connect to one use it): a restore replaces
    streams, which the session's shared server keeps for every other test."""
    with NatsServer(tmp_path / "bus", port=0) as server:
        yield server


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Where the README's commands run: they call ``.venv/bin/dai`` and write ``./backup``."""
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
    return work


def _environment(server: NatsServer, database_url: str | None = None) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], **server.environment("operator")}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return env


async def _dai(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "democratic_ai.ops.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _comparable(state: dict) -> dict:
    """A stream's state as a restore must keep it. An empty stream has no first message: the server
    reports its first sequence as 0 or as the last + 1, and no first time."""
    keys = ("messages", "last_seq", "num_deleted", "bytes") + (("first_seq", "first_ts") if state["messages"] else ())
    return {key: state.get(key) for key in keys}


async def _quiet_states(nc: NATS) -> dict[str, dict]:
    """Each stream's state once nothing writes any more: a gateway gives back an idle rate-limit
    lease (RATELIMIT) a lease period after its last call, and flushes usage in the meantime."""
    previous = await _states(nc)

    async def unchanged() -> dict[str, dict] | None:
        nonlocal previous
        await asyncio.sleep(2.5)  # longer than the gateway's lease period and its return loop (1 s each)
        current = await _states(nc)
        quiet, previous = current == previous, current
        return current if quiet else None

    return await eventually(unchanged, "the streams to stop growing", timeout=30, interval=0)


async def _states(nc: NATS) -> dict[str, dict]:
    """Each stream's state as the server reports it."""
    return {name: _comparable((await api(nc, f"STREAM.INFO.{name}"))["state"]) for name in await stream_names(nc)}


async def _messages(nc: NATS, stream: str, last: int) -> list[tuple[int, object]]:
    """Every sequence up to ``last`` with what it holds: subject, headers, data and time, or nothing."""
    held: list[tuple[int, object]] = []
    for seq in range(1, last + 1):
        try:
            message = (await api(nc, f"STREAM.MSG.GET.{stream}", {"seq": seq}))["message"]
        except JetStreamApiError as exc:
            if exc.err_code != NO_MESSAGE:
                raise
            held.append((seq, None))
            continue
        headers = base64.b64decode(message["hdrs"]) if message.get("hdrs") else b""
        held.append((seq, (message["subject"], headers, message.get("data"), message["time"])))
    return held


async def _log(nc: NATS) -> dict[str, list[tuple[int, object]]]:
    states = await _states(nc)
    return {name: await _messages(nc, name, state["last_seq"]) for name, state in states.items()}


async def _scratch_stream(nc: NATS) -> None:
    """A stream of no platform process, with headers, message ids and a gap: every stream goes
    into a backup, and the gap must come back as a gap."""
    js = nc.jetstream()
    await js.add_stream(name="SCRATCH", subjects=["scratch.>"])
    for n in range(1, 6):
        await js.publish(f"scratch.{n}", f"event {n}".encode(), headers={"Nats-Msg-Id": f"s-{n}", "X-N": str(n)})
    await js.delete_msg("SCRATCH", 3)


@pytest.fixture
async def restored_gateway(
    tmp_path: Path, postgres_server: PostgresServer, kek: KeyEncryptionKey
) -> AsyncIterator[tuple[NatsServer, str, list[web.AppRunner]]]:
    """The wiped platform: a server with an empty store and a fresh database; the runners of the
    gateways the test starts on it are cleaned up afterwards."""
    runners: list[web.AppRunner] = []
    with NatsServer(tmp_path / "wiped", port=0) as server, throwaway_database(postgres_server) as url:
        yield server, url, runners
        for runner in runners:
            await runner.cleanup()


async def _start_gateway(server: NatsServer, database_url: str, kek: KeyEncryptionKey, runners: list) -> str:
    port = free_port()
    config = GatewayConfig(
        bus=server.bus("gateway"),
        database_url=app_dsn(database_url),
        port=port,
        metering=TEST_METERING,
        billing=BILLING,
        kek=kek,
    )
    runner = runner_for(create_app(config))
    await runner.setup()
    runners.append(runner)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}"


async def _call(url: str, key: str, text: str) -> tuple[int, dict]:
    return await http(
        "POST", f"{url}/v1/capabilities/test.echo/invoke", json={"text": text}, headers={"X-API-Key": key}
    )


async def test_a_backup_restored_on_a_wiped_server_serves_as_before(
    start_gateway: StartGateway,
    nats_server: NatsServer,
    nc: NATS,
    pool: asyncpg.Pool,
    echo: Echo,
    folder: Path,
    restored_gateway: tuple[NatsServer, str, list[web.AppRunner]],
    kek: KeyEncryptionKey,
) -> None:
    gateway: Gateway = await start_gateway(billing=BILLING)
    tenant = await new_billing_tenant(gateway)
    service = BillingService(nc.jetstream(), load_plans(), PostgresUsageTotals(pool, nc.jetstream()), BILLING)
    await service.set_plan(Meta(at=JAN_START), tenant.tenant_id, "starter")
    for n in range(3):
        status, body = await _call(gateway.url, gateway.api_key, f"before {n}")
        assert status == 200 and body["result"] == {"text": f"before {n}"}, body
    status, body = await http(
        "POST",
        f"{gateway.url}/v1/billing/close-period",
        json={"tenant_id": tenant.tenant_id, "period": "2025-01"},
        credential=gateway.api_key,
    )
    assert status == 200, body
    await ended_calls(nc, pool, gateway.tenant, 3)
    for name in PROJECTIONS:
        await caught_up(nc, pool, name)
    invoice_url = f"{gateway.url}/v1/invoices/{tenant.tenant_id}-2025-01"
    status, invoice = await http("GET", invoice_url, credential=tenant.admin_token)
    assert status == 200 and invoice["total"] > 0, invoice
    await _scratch_stream(nc)

    states = await _quiet_states(nc)
    before = await _log(nc)
    assert {"MCP", "USAGE", "IDENTITY", "BILLING", "REGISTRY", "RATELIMIT", "KV_dai_jwt_keys", "SCRATCH"} <= set(states)
    [backup_script, restore_script] = section_scripts(REPO / "README.md", "## Back up and restore")
    out, _ = await run_script(backup_script, cwd=folder, env=_environment(nats_server))
    assert f"backed up {len(states)} streams into backup" in out
    assert f'{{"name":"IDENTITY","messages":{states["IDENTITY"]["messages"]},' in out  # the jq summary
    manifest = json.loads((folder / "backup" / MANIFEST).read_text())
    assert {s["name"]: _comparable(s["state"]) for s in manifest["streams"]} == states
    assert await _log(nc) == before, "the platform wrote while it was backed up: the comparison below means nothing"

    # The log is lost: a server with an empty store and a fresh database. A platform process
    # starting on it would create its streams, empty: the restore replaces those without --replace.
    server, database_url, runners = restored_gateway
    wiped = await connect(server.bus("operator"), "test-wiped")
    try:
        await ensure_streams(wiped.jetstream())
        out, _ = await run_script(restore_script, cwd=folder, env=_environment(server, database_url), timeout=300)
        assert f"restored {len(states)} streams from backup" in out
        assert "(replaced)" in out  # the empty streams ensure_streams made
        for name in PROJECTIONS:
            assert f"rebuilt {name} from " in out
            assert f"{name}: equal to a rebuild from the log" in out

        assert await _states(wiped) == states
        assert await _log(wiped) == before  # every message at its sequence, with its headers and time; the gap too

        url = await _start_gateway(server, database_url, kek, runners)
        await gateway_ready(url, gateway.api_key)  # the super admin's API key, from the restored IDENTITY
        module = Echo()
        await module.start(wiped)
        try:
            status, body = await _call(url, gateway.api_key, "after")
            assert status == 200 and body["result"] == {"text": "after"}, body
        finally:
            await module.stop()
        # The administrator's token from before the loss: signed by a key in the restored KV bucket.
        status, again = await http(
            "GET", f"{url}/v1/invoices/{tenant.tenant_id}-2025-01", credential=tenant.admin_token
        )
        assert status == 200 and again == invoice
    finally:
        await wiped.close()


async def _backup(nc: NATS, nats_server: NatsServer, directory: Path) -> dict[str, dict]:
    await issue_key(nc, "acme-backup")  # IDENTITY holds data
    code, _, err = await _dai(_environment(nats_server), "backup", str(directory))
    assert code == 0, err
    return await _states(nc)


async def test_a_restore_over_streams_with_data_is_refused_unless_replace(
    nc: NATS, nats_server: NatsServer, tmp_path: Path
) -> None:
    states = await _backup(nc, nats_server, tmp_path / "backup")
    await issue_key(nc, "acme-later")  # written after the backup: a refused restore keeps it
    later = await _states(nc)
    env = _environment(nats_server)
    code, out, err = await _dai(env, "restore", str(tmp_path / "backup"), "--no-rebuild")
    assert code == 4, err
    assert "these streams exist with data: IDENTITY (" in err and "nothing was restored" in err
    assert "--replace" in err and out == ""
    assert await _states(nc) == later

    # A process reading IDENTITY (a durable consumer stands for it): the restore says to restart it.
    await nc.jetstream().add_consumer("IDENTITY", durable_name="reader")
    code, out, err = await _dai(env, "restore", str(tmp_path / "backup"), "--no-rebuild", "--replace")
    assert code == 0, err
    assert "(replaced)" in out and "dai projections rebuild identity" in out
    assert "(replaced, dropping 1 consumer)" in out and "restart them" in out
    assert await _states(nc) == states  # the key written after the backup is gone with the replaced stream


async def test_a_directory_that_is_not_a_backup_is_refused(nc: NATS, nats_server: NatsServer, tmp_path: Path) -> None:
    before = await _states(nc)
    env = _environment(nats_server)
    empty = tmp_path / "empty"
    empty.mkdir()
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / MANIFEST).write_text('{"format": "something else"}')
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / MANIFEST).write_text("not json")
    for directory, says in (
        (empty, "is not a backup: it has no manifest.json"),
        (tmp_path / "missing", "is not a backup: it has no manifest.json"),
        (garbage, "is not the manifest of a backup"),
        (foreign, "is not JSON"),
    ):
        code, out, err = await _dai(env, "restore", str(directory), "--no-rebuild")
        assert (code, out) == (3, ""), (directory, code, err)
        assert says in err and err.count("\n") == 1, err
    assert await _states(nc) == before


async def test_a_damaged_backup_is_refused_before_anything_changes(
    nc: NATS, nats_server: NatsServer, tmp_path: Path
) -> None:
    directory = tmp_path / "backup"
    states = await _backup(nc, nats_server, directory)
    env = _environment(nats_server)
    archive = directory / "IDENTITY.tar.s2"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    # --replace, so only the checksum stands between the damaged file and the server.
    code, out, err = await _dai(env, "restore", str(directory), "--no-rebuild", "--replace")
    assert (code, out) == (3, ""), err
    assert "the backup is damaged:" in err and "IDENTITY.tar.s2" in err
    archive.unlink()
    code, _, err = await _dai(env, "restore", str(directory), "--no-rebuild", "--replace")
    assert code == 3 and "IDENTITY.tar.s2 is missing" in err
    assert await _states(nc) == states


async def test_a_backup_goes_only_into_an_empty_directory_and_a_restore_needs_the_operator_and_a_database(
    nc: NATS, nats_server: NatsServer, tmp_path: Path
) -> None:
    directory = tmp_path / "backup"
    await _backup(nc, nats_server, directory)
    files = sorted(p.name for p in directory.iterdir())
    assert MANIFEST in files and "IDENTITY.tar.s2" in files and not [f for f in files if f.startswith(".")]
    env = _environment(nats_server)
    code, out, err = await _dai(env, "backup", str(directory))
    assert (code, out) == (3, "") and "is not an empty directory" in err
    assert sorted(p.name for p in directory.iterdir()) == files
    # Another role's credential: refused before anything is read or deleted.
    gateway_env = {**env, **nats_server.environment("gateway")}
    for command in (["backup", str(tmp_path / "other")], ["restore", str(directory), "--no-rebuild", "--replace"]):
        code, out, err = await _dai(gateway_env, *command)
        assert (code, out) == (2, "") and "act as the operator; connect as the operator" in err, err
    assert not (tmp_path / "other").exists()
    # Without DATABASE_URL the read models could not be rebuilt: refused before anything is read.
    before = await _states(nc)
    code, out, err = await _dai(env, "restore", str(directory), "--replace")
    assert code == 1 and "set DATABASE_URL" in err
    assert await _states(nc) == before


async def test_the_manifest_says_what_each_file_holds(nc: NATS, nats_server: NatsServer, tmp_path: Path) -> None:
    directory = tmp_path / "backup"
    states = await _backup(nc, nats_server, directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    assert manifest["format"] == "democratic-ai-backup" and manifest["version"] == 1
    assert manifest["nats_server_version"].count(".") >= 2 and manifest["platform_version"]
    for stream in manifest["streams"]:
        assert (directory / stream["file"]).stat().st_size == stream["size"]
        assert (
            stream["config"]["name"] == stream["name"]
            and stream["state"]["last_seq"] == states[stream["name"]]["last_seq"]
        )
    assert [s["name"] for s in manifest["streams"]] == sorted(states)


# The process's own high-water mark (VmHWM): getrusage's ru_maxrss survives exec, so a child forked
# from this test process would report the test's own peak.
_PEAK_RSS = (
    "import re, sys\n"
    "from democratic_ai.ops.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "status = open('/proc/self/status').read()\n"
    "print('peak-rss-kib', re.search(r'VmHWM:\\s*(\\d+)', status).group(1), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


async def _peak_rss(env: dict[str, str], *args: str) -> int:
    """The peak resident memory, in KiB, of one ``dai`` command (which must succeed)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PEAK_RSS, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()
    return int(err.decode().rsplit("peak-rss-kib ", 1)[1].split()[0])


async def test_a_stream_larger_than_the_window_flows_in_bounded_memory(
    nc: NATS, nats_server: NatsServer, tmp_path: Path
) -> None:
    """48 MB that do not compress: twelve times the snapshot's window, so the server sends on only
    as the chunks are acknowledged; neither command holds the stream in memory."""
    env = _environment(nats_server)
    baseline = await _peak_rss(env, "backup", str(tmp_path / "small"))
    js = nc.jetstream()
    await js.add_stream(name="LARGE", subjects=["large.>"])
    for n in range(192):
        await js.publish_async(f"large.{n % 8}", os.urandom(256 * 1024))
    await js.publish_async_completed()
    before = await _log(nc)
    large = await _peak_rss(env, "backup", str(tmp_path / "large"))
    size = (tmp_path / "large" / "LARGE.tar.s2").stat().st_size
    assert size > 48 * 1024 * 1024
    assert large - baseline < 24 * 1024, f"the backup of {size:,} bytes grew the process by {large - baseline:,} KiB"

    await js.delete_stream("LARGE")
    await js.add_stream(name="LARGE", subjects=["large.>"])  # empty: replaced without --replace
    restored = await _peak_rss(env, "restore", str(tmp_path / "large"), "--no-rebuild", "--replace")
    assert restored - baseline < 24 * 1024, f"the restore grew the process by {restored - baseline:,} KiB"
    assert await _log(nc) == before


async def test_a_manifest_edited_by_hand_is_refused(nc: NATS, nats_server: NatsServer, tmp_path: Path) -> None:
    directory = tmp_path / "backup"
    states = await _backup(nc, nats_server, directory)
    original = json.loads((directory / MANIFEST).read_text())
    identity = next(s for s in original["streams"] if s["name"] == "IDENTITY")
    edits = (
        ({**original, "format": "nats-cli-backup"}, "is not the manifest of a dai backup"),
        ({**original, "version": 2}, "is of format version 2; this dai reads version 1"),
        ({**original, "streams": [*original["streams"], identity]}, "lists a stream twice"),
        (
            {**original, "streams": [{**identity, "file": "../IDENTITY.tar.s2"}]},
            "names stream 'IDENTITY' inconsistently",
        ),
        ({**original, "streams": [{**identity, "size": "big"}]}, "is not the manifest of a backup: Expected `int`"),
    )
    env = _environment(nats_server)
    for manifest, says in edits:
        (directory / MANIFEST).write_text(json.dumps(manifest))
        code, out, err = await _dai(env, "restore", str(directory), "--no-rebuild", "--replace")
        assert (code, out) == (3, ""), (says, err)
        assert says in err, err
    assert await _states(nc) == states
    # Fields a later dai may add are ignored: the original with one more restores.
    (directory / MANIFEST).write_text(json.dumps({**original, "encrypted": False}))
    code, _, err = await _dai(env, "restore", str(directory), "--no-rebuild", "--replace")
    assert code == 0, err


class _StallingSource(io.BytesIO):
    """An archive whose second chunk comes only after the server's 5 s patience has run out."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        self.reads += 1
        if self.reads == 2:
            time.sleep(6)  # blocks the loop on purpose: nothing reaches the server meanwhile
        return super().read(size)


async def test_a_restore_the_server_drops_fails_in_one_line_and_leaves_no_stream(
    nc: NATS, nats_server: NatsServer, tmp_path: Path
) -> None:
    js = nc.jetstream()
    await js.add_stream(name="STALL", subjects=["stall.>"])
    for n in range(8):
        await js.publish_async(f"stall.{n}", os.urandom(256 * 1024))
    await js.publish_async_completed()
    archive = io.BytesIO()
    snapshot = await snapshot_stream(nc, "STALL", archive, lambda _: None, on_start=lambda _: None)
    assert snapshot.size > 2 * RESTORE_CHUNK and snapshot.size == len(archive.getvalue())
    await js.delete_stream("STALL")
    with pytest.raises(SnapshotError, match="the server dropped the restore of STALL"):
        await restore_stream(nc, snapshot.config, snapshot.state, _StallingSource(archive.getvalue()), lambda _: None)
    with pytest.raises(JetStreamApiError, match="stream not found"):
        await api(nc, "STREAM.INFO.STALL")
