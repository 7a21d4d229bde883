"""One ``dai up`` per data dir, nothing of it outlives it, and ``dai env`` points the ``dai`` commands at it.

Real processes throughout: ``dai up`` subprocesses on a tmp data dir with free ports, a second one
refused, a ``kill -9`` after which every process it started is checked gone by pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from democratic_ai.ops.datadir import DataDirInUse, DataDirLock, holder
from democratic_ai.ops.ports import free_port

from support.waiting import eventually_sync

DAI = [sys.executable, "-m", "democratic_ai.ops.cli"]
# What the user's shell must not carry into these tests: every dai command gets its servers from `dai env`.
PLATFORM_VARS = (
    "NATS_URL",
    "DATABASE_URL",
    "DATABASE_APP_URL",
    "DAI_BUS_CREDENTIAL",
    "DAI_BUS_CREDENTIAL_FILE",
    "DAI_KEK",
    "DAI_KEK_FILE",
    "NATS_CA_FILE",
)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in PLATFORM_VARS}


class _Up:
    """A running ``dai up``: its process and every line it (and its reaper) printed so far."""

    def __init__(self, data_dir: Path, port: int, nats_port: int) -> None:
        self.data_dir, self.port = data_dir, port
        self.process = subprocess.Popen(
            [*DAI, "up", "--data-dir", str(data_dir), "--port", str(port), "--nats-port", str(nats_port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_clean_env(),
        )
        self.lines: list[str] = []
        assert self.process.stdout is not None
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(iter(self.process.stdout.readline, "")), daemon=True
        )
        self._reader.start()

        def up() -> bool:
            assert self.process.poll() is None, "dai up exited"
            return any(line.startswith("Press Ctrl-C") for line in self.lines)

        try:
            eventually_sync(up, "dai up to come up", timeout=90, interval=0.1)
        except AssertionError as error:
            self.close()
            raise AssertionError(f"{error}:\n" + self.output) from None

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._reader.join(timeout=30)  # the pipe closes once dai up and its reaper are gone
        assert self.process.stdout is not None
        self.process.stdout.close()


def _get(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.status


def _invoke(port: int, key: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/capabilities/text.analyze/invoke",
        data=b'{"text": "Still here."}',
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _nats_servers_on(store: Path) -> list[int]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "nats-server" and str(store) in cmdline:
            found.append(proc.pid)
    return found


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _postmaster(data_dir: Path) -> psutil.Process:
    return psutil.Process(int((data_dir / "pg" / "postmaster.pid").read_text().split("\n", 1)[0]))


@pytest.mark.slow
def test_a_second_dai_up_is_refused_and_dai_env_points_the_dai_commands_at_the_first(tmp_path: Path) -> None:
    data_dir = tmp_path / ".dai"
    first = _Up(data_dir, free_port(), free_port())
    try:
        started = time.monotonic()
        second = subprocess.run(
            [*DAI, "up", "--data-dir", str(data_dir), "--port", str(free_port()), "--nats-port", str(free_port())],
            capture_output=True,
            text=True,
            timeout=60,
            env=_clean_env(),
        )
        assert second.returncode == 1
        lines = [line for line in (second.stdout + second.stderr).splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert re.fullmatch(
            rf"dai: {re.escape(str(data_dir))} is in use by dai up \(pid {first.process.pid}, started"
            r" \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); stop it first or use --data-dir",
            lines[0],
        ), lines[0]
        assert time.monotonic() - started < 15  # refused up front, before starting any server
        assert len(_nats_servers_on(data_dir / "nats")) == 1
        assert _get(first.port, "/healthz") == 200 and _get(first.port, "/readyz") == 200

        # The banner's export lines are what `dai env` prints, and with exactly them the dai commands work.
        env = subprocess.run(
            [*DAI, "env", "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=30, env=_clean_env()
        )
        assert env.returncode == 0, env.stderr
        exports = env.stdout.splitlines()
        assert [line.split("=", 1)[0] for line in exports] == [
            "export NATS_URL",
            "export DATABASE_URL",
            "export DAI_BUS_CREDENTIAL_FILE",
            "export DAI_KEK_FILE",
        ]
        assert all(f"  {line}\n" in first.output for line in exports)
        dai = " ".join(DAI)
        script = (
            f'eval "$({dai} env --data-dir {data_dir})" && {dai} projections status'
            f" && {dai} replay REGISTRY --format csv --out {tmp_path / 'registry.csv'}"
            f" && {dai} billing close-period"
        )
        result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120, env=_clean_env())
        assert result.returncode == 0, result.stdout + result.stderr
        status = result.stdout.splitlines()
        assert status[0].split()[:2] == ["PROJECTION", "STREAM"]
        assert {"registry", "identity", "usage", "billing"} <= {line.split()[0] for line in status[1:5]}
        assert "module.registered" in (tmp_path / "registry.csv").read_text()
    finally:
        first.close()
    assert first.process.returncode == 0
    assert holder(data_dir) is None  # stopped: the lock is free and `dai env` says so
    idle = subprocess.run([*DAI, "env", "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=30)
    assert idle.returncode == 1 and idle.stdout == "" and idle.stderr.startswith(f"dai: no dai up runs on {data_dir}")


@pytest.mark.slow
def test_kill_9_of_dai_up_leaves_nothing_running_and_the_next_dai_up_serves(tmp_path: Path) -> None:
    data_dir, port, nats_port = tmp_path / ".dai", free_port(), free_port()
    up = _Up(data_dir, port, nats_port)
    try:
        key = (data_dir / "admin.key").read_text().strip()
        postmaster = _postmaster(data_dir)
        started = [*psutil.Process(up.process.pid).children(recursive=True), postmaster, *postmaster.children()]
        names = {proc.name() for proc in started}
        assert {"nats-server", "postgres"} <= names and len(started) >= 8  # 6 platform processes, the reaper, …
        up.process.kill()
        up.process.wait()
        killed = time.monotonic()
        eventually_sync(
            lambda: all(_gone(proc) for proc in started),
            lambda: (
                f"every process to stop after kill -9; still running: "
                f"{[f'{proc.pid} {proc.name()}' for proc in started if not _gone(proc)]}"
            ),
            timeout=30,
            interval=0.1,
        )
        assert time.monotonic() - killed < 10
        assert f"dai: dai up (pid {up.process.pid}) on {data_dir} is gone; stopping what it started" in up.output
        idle = subprocess.run([*DAI, "env", "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=30)
        assert idle.returncode == 1 and "no dai up runs" in idle.stderr
    finally:
        up.close()

    again = _Up(data_dir, port, nats_port)  # the same ports and store: all free again
    try:
        assert "left processes running" not in again.output  # the reaper stopped everything already
        assert _invoke(port, key)["result"]["word_count"] == 2
    finally:
        again.close()
    assert again.process.returncode == 0


def test_dai_env_on_an_idle_data_dir_exits_1(tmp_path: Path) -> None:
    for data_dir in (tmp_path / "never-used", tmp_path / "crashed"):
        if data_dir.name == "crashed":  # what a dai up killed before its reaper existed leaves behind
            data_dir.mkdir()
            (data_dir / "dai.lock").write_text(json.dumps({"pid": os.getpid(), "started": "2026-01-01T00:00:00+00:00"}))
            (data_dir / "env").write_text("export NATS_URL=nats://127.0.0.1:1\n")
        result = subprocess.run([*DAI, "env", "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.splitlines() == [
            f"dai: no dai up runs on {data_dir}; start one with: dai up --data-dir {data_dir}"
        ]


def test_the_lock_names_its_holder_and_is_free_when_the_holder_dies(tmp_path: Path) -> None:
    # The holder keeps the lock until the test kills it.
    code = (
        "import sys, time; from democratic_ai.ops.datadir import DataDirLock;"
        f" DataDirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"
    )
    holder_process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder_process.stdout is not None and holder_process.stdout.readline() == "held\n"
        lock = DataDirLock(tmp_path)
        with pytest.raises(DataDirInUse) as refused:
            lock.acquire()
        assert refused.value.holder.pid == holder_process.pid
        current = holder(tmp_path)
        assert current is not None and current.pid == holder_process.pid
        holder_process.kill()
        holder_process.wait()
        lock.acquire()  # the kernel dropped the dead holder's lock: nothing stale to clean
        try:
            assert holder(tmp_path) is not None and holder(tmp_path).pid == os.getpid()  # type: ignore[union-attr]
        finally:
            lock.release()
        assert holder(tmp_path) is None
    finally:
        holder_process.kill()
        holder_process.wait()
        if holder_process.stdout is not None:
            holder_process.stdout.close()


@pytest.mark.slow
def test_servers_an_earlier_crash_left_on_the_data_dir_are_stopped_with_a_line(tmp_path: Path) -> None:
    """What a dai up from before the reaper left behind: its nats-server and postmaster, parents gone."""
    from democratic_ai.ops.reaper import stop_leftovers

    leave = (
        "import os, sys; from democratic_ai.ops.nats_server import NatsServer;"
        " from democratic_ai.ops.postgres_server import PostgresServer;"
        f" n = NatsServer({str(tmp_path)!r}, port=0); n.start(); PostgresServer({str(tmp_path)!r}).start();"
        " print(n.process.pid, flush=True); os._exit(0)"
    )
    result = subprocess.run([sys.executable, "-c", leave], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    nats, postmaster = psutil.Process(int(result.stdout.split()[0])), _postmaster(tmp_path)
    said: list[str] = []
    assert stop_leftovers(tmp_path, said.append) == []
    assert said == [
        (
            f"dai: an earlier dai up on {tmp_path} left processes running; stopping them:"
            f" nats-server (pid {nats.pid}), postgres (pid {postmaster.pid})"
        )
    ]
    assert _gone(nats) and _gone(postmaster)
    assert stop_leftovers(tmp_path, said.append) == [] and len(said) == 1  # nothing left: nothing said


def test_the_lock_of_a_dead_dai_up_whose_reaper_still_stops_things_is_waited_for(tmp_path: Path) -> None:
    """The reaper holds a copy of the lock until it has stopped everything: the next dai up waits for it."""
    # The fork (the reaper) keeps its copy of the lock for two seconds after its parent died.
    code = (
        "import os, time; from democratic_ai.ops.datadir import DataDirLock;"
        f" DataDirLock({str(tmp_path)!r}).acquire(); pid = os.fork();"
        " (os.close(1), os.close(2), time.sleep(2), os._exit(0)) if pid == 0"
        " else (print(os.getpid(), pid, flush=True), os._exit(0))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    dead, reaper = (int(word) for word in result.stdout.split())
    waited: list[int | None] = []
    lock = DataDirLock(tmp_path)
    started = time.monotonic()
    lock.acquire(on_wait=lambda h: waited.append(h.pid))
    try:
        assert waited == [dead]  # told once, with the pid of the dai up that is gone
        assert not psutil.pid_exists(reaper) or _gone(psutil.Process(reaper))
        assert 0.5 < time.monotonic() - started < 10
    finally:
        lock.release()
