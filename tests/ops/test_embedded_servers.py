"""The embedded NATS and PostgreSQL servers start, persist data and stop for real."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from pathlib import Path

import asyncpg
import psutil
import pytest

from democratic_ai.contracts.bus import connect
from democratic_ai.ops import nats_server
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import PortInUseError, ServerStartError
from democratic_ai.ops.postgres_server import PostgresServer


def _processes_using(path: Path) -> list[psutil.Process]:
    """Live processes whose command line mentions `path` (a server's data dir)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(str(path) in arg for arg in cmdline):
            found.append(proc)
    return found


def test_nats_random_port_has_jetstream(tmp_path: Path) -> None:
    async def check(server: NatsServer) -> int:
        nc = await connect(server.bus(), "test")
        try:
            info = await nc.jetstream().account_info()
            return info.streams
        finally:
            await nc.close()

    with NatsServer(tmp_path, port=0) as server:
        assert server.url == f"nats://127.0.0.1:{server.port}"
        assert asyncio.run(check(server)) == 0
        assert (tmp_path / "nats" / "jetstream").is_dir()
        assert "Server is ready" in (tmp_path / "nats" / "nats-server.log").read_text()
    assert _processes_using(tmp_path / "nats") == []


def test_nats_stream_survives_restart(tmp_path: Path) -> None:
    async def create(server: NatsServer) -> None:
        nc = await connect(server.bus(), "test")
        try:
            js = nc.jetstream()
            await js.add_stream(name="EVENTS", subjects=["events.>"])
            await js.publish("events.created", b"hello")
        finally:
            await nc.close()

    async def read(server: NatsServer) -> tuple[int, bytes]:
        nc = await connect(server.bus(), "test")
        try:
            js = nc.jetstream()
            info = await js.stream_info("EVENTS")
            msg = await js.get_msg("EVENTS", seq=1)
            return info.state.messages, msg.data or b""
        finally:
            await nc.close()

    server = NatsServer(tmp_path, port=0)
    server.start()
    try:
        asyncio.run(create(server))
    finally:
        server.stop()
    assert _processes_using(tmp_path / "nats") == []
    server.stop()  # idempotent

    with NatsServer(tmp_path, port=0) as again:
        assert asyncio.run(read(again)) == (1, b"hello")


def test_nats_taken_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUseError) as caught:
            NatsServer(tmp_path, port=port).start()
    message = str(caught.value)
    assert message == f"port {port} is already in use (NATS); stop what is using it or pass --nats-port"
    assert (caught.value.port, caught.value.what) == (port, "NATS")
    assert not (tmp_path / "nats").exists()  # refused before anything was started


def test_nats_start_failure_shows_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("jetstream { max_file_store: banana }\n")
    monkeypatch.setattr(nats_server, "CONFIG_PATH", bad)
    with pytest.raises(ServerStartError) as caught:
        NatsServer(tmp_path, port=0).start(timeout=5.0)
    assert "exited with code" in str(caught.value)
    assert "banana" in str(caught.value) or "max_file_store" in str(caught.value)
    assert _processes_using(tmp_path / "nats") == []


def test_postgres_select_and_fresh_database(tmp_path: Path) -> None:
    async def check(url: str, db_url: str) -> tuple[int, str]:
        conn = await asyncpg.connect(url)
        try:
            one = await conn.fetchval("select 1")
        finally:
            await conn.close()
        conn = await asyncpg.connect(db_url)
        try:
            name = await conn.fetchval("select current_database()")
        finally:
            await conn.close()
        return one, name

    with PostgresServer(tmp_path) as server:
        db_url = server.ensure_database("test_fresh")
        assert server.ensure_database("test_fresh") == db_url  # second call: no error, same DSN
        assert asyncio.run(check(server.url, db_url)) == (1, "test_fresh")
        with pytest.raises(ValueError, match="must match"):
            server.ensure_database("Robert'); DROP TABLE students;--")
    assert _processes_using(tmp_path / "pg") == []


def test_postgres_data_survives_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def write(url: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("create table notes (id int primary key, body text)")
            await conn.execute("insert into notes values (1, 'kept')")
        finally:
            await conn.close()

    async def read(url: str) -> list[tuple[int, str]]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(row) for row in await conn.fetch("select id, body from notes")]
        finally:
            await conn.close()

    # A relative data dir, as `dai up` uses by default (./.dai).
    monkeypatch.chdir(tmp_path)
    server = PostgresServer(Path(".dai"))
    server.start()
    try:
        asyncio.run(write(server.ensure_database("app")))
    finally:
        server.stop()
    server.stop()  # idempotent
    assert _processes_using(tmp_path / ".dai" / "pg") == []

    server.start()  # same object, same data dir
    try:
        assert asyncio.run(read(server.database_url("app"))) == [(1, "kept")]
    finally:
        server.stop()
    assert _processes_using(tmp_path / ".dai" / "pg") == []


def test_each_nats_server_has_its_own_monitoring_port(tmp_path: Path) -> None:
    """nats.conf turns the HTTP monitoring endpoint on (8222); servers started side by side, as
    the tests start them, each get a free port of their own instead of failing on 8222."""
    assert nats_server.config_monitor_port() == 8222
    with NatsServer(tmp_path / "a", port=0) as first, NatsServer(tmp_path / "b", port=0) as second:
        assert first.monitor_port != second.monitor_port
        for server in (first, second):
            assert server.monitor_url == f"http://127.0.0.1:{server.monitor_port}"
            with urllib.request.urlopen(f"{server.monitor_url}/healthz", timeout=5) as response:
                assert json.loads(response.read()) == {"status": "ok"}
            with urllib.request.urlopen(f"{server.monitor_url}/varz", timeout=5) as response:
                assert json.loads(response.read())["port"] == server.port
