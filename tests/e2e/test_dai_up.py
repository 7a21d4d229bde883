"""``dai up`` on an empty data dir brings the platform up; stopped and started again, it keeps its state."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import nats
import nats.errors
import psutil
import pytest

from democratic_ai.ops.ports import free_port

from support.waiting import eventually_sync

pytestmark = pytest.mark.slow


def _start(data_dir: Path, port: int, nats_port: int, *extra: str) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "democratic_ai.ops.cli",
            "up",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            "--nats-port",
            str(nats_port),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines = []
    deadline = time.monotonic() + 90
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        if line.startswith("Press Ctrl-C"):
            return process, "".join(lines)
    process.kill()
    process.stdout.close()
    raise AssertionError("dai up did not come up:\n" + "".join(lines))


def _stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        if process.stdout is not None:
            process.stdout.close()


def _call(port: int, key: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


async def _anonymous_refused(url: str) -> bool:
    try:
        connection = await nats.connect(url, connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=0)
    except nats.errors.Error as exc:
        refused = "Authorization Violation" in str(exc)
    else:
        await connection.close()
        return False
    return refused


def test_up_stop_up_keeps_the_admin_key_and_the_registry(tmp_path: Path) -> None:
    data_dir, port, nats_port = tmp_path / ".dai", free_port(), free_port()
    process, banner = _start(data_dir, port, nats_port)
    try:
        key_file = data_dir / "admin.key"
        key = key_file.read_text().strip()
        assert key in banner  # shown once, on first start
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert f"http://127.0.0.1:{port}" in banner and "curl" in banner
        status, body = _call(
            port,
            key,
            "/v1/capabilities/text.summarize/invoke",
            {"text": "Streams store messages. Consumers read them. Cats sleep a lot.", "max_length": 40},
        )
        assert status == 200 and 0 < len(body["result"]["summary"]) <= 40
        # Locked down with no extra step: nobody gets on the bus without a credential, and every
        # credential is the owner's alone.
        assert asyncio.run(_anonymous_refused(f"nats://127.0.0.1:{nats_port}"))
        credentials = data_dir / "credentials"
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o700
        files = [path for path in credentials.rglob("*") if path.is_file()]
        assert {"operator.credential", "gateway.credential", "kek", "text-tools.credential"} <= {f.name for f in files}
        assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files)
        assert str(credentials / "operator.credential") in banner
        # The nats-server's monitoring port is printed and answers; dai status reads the platform as the operator.
        monitor = re.search(r"^  monitor  (http://127\.0\.0\.1:\d+) ", banner, flags=re.MULTILINE)
        assert monitor is not None, banner
        with urllib.request.urlopen(f"{monitor.group(1)}/healthz", timeout=5) as response:
            assert json.loads(response.read()) == {"status": "ok"}
        # The hub's and the projections' metrics are served where the banner says.
        metrics = re.search(
            r"^  metrics  .*?(http://127\.0\.0\.1:\d+/metrics) \(hub\), (http://\S+) \(projections\)",
            banner,
            flags=re.MULTILINE,
        )
        assert metrics is not None, banner
        for url, family in ((metrics.group(1), "dai_hub_live_instances"), (metrics.group(2), "dai_projection_")):
            with urllib.request.urlopen(url, timeout=5) as response:
                assert family in response.read().decode(), url
        # The console comes with the package: its page and scripts are served from the installed files.
        assert f"  console  http://127.0.0.1:{port}/console " in banner
        for path in ("/console", "/console/static/app.js", "/console/static/i18n/shell.ja.json"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                assert response.status == 200 and response.headers["Content-Security-Policy"], path
        operator_env = {
            **os.environ,
            "NATS_URL": f"nats://127.0.0.1:{nats_port}",
            "DAI_BUS_CREDENTIAL_FILE": str(credentials / "operator.credential"),
        }
        operator_env.pop("DATABASE_URL", None)
        done = subprocess.run(
            [sys.executable, "-m", "democratic_ai.ops.cli", "status", "--json"],
            env=operator_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        document = json.loads(done.stdout)
        assert {"text-tools", "image-tools"} <= {m["module_id"] for m in document["modules"]}
        assert document["hub"]["answered"] and {"MCP", "REGISTRY"} <= {s["name"] for s in document["streams"]}
        assert {"projection-registry", "projection-identity"} <= {c["name"] for c in document["consumers"]}
    finally:
        assert _stop(process) == 0

    process, banner = _start(data_dir, port, nats_port)
    try:
        assert key_file.read_text().strip() == key
        assert key not in banner  # never printed twice

        def listed() -> bool:  # the registry read model persisted; the module re-announces an unchanged manifest
            _, listing = _call(port, key, "/v1/capabilities")
            return {"text.summarize", "text.analyze"} <= {c["action"] for c in listing["capabilities"]}

        eventually_sync(listed, "text.summarize and text.analyze listed again", timeout=10, interval=0.2)
        status, _ = _call(port, key, "/v1/capabilities/text.analyze/invoke", {"text": "Still here."})
        assert status == 200
    finally:
        assert _stop(process) == 0


def _child(process: subprocess.Popen[str], *words: str) -> psutil.Process:
    """The child of ``dai up`` running ``dai`` with arguments that start with ``words``."""
    for child in psutil.Process(process.pid).children():
        command = child.cmdline()
        if "democratic_ai.ops.cli" in command:
            arguments = command[command.index("democratic_ai.ops.cli") + 1 :]
            if tuple(arguments[: len(words)]) == words:
                return child
    raise AssertionError(f"dai up has no child running {' '.join(words)}")


def _wait_for_line(lines: list[str], pattern: str, timeout: float) -> re.Match[str]:
    def said() -> re.Match[str] | None:
        return next((match for line in list(lines) if (match := re.search(pattern, line)) is not None), None)

    return eventually_sync(said, lambda: f"a line matching {pattern!r} in:\n" + "".join(lines), timeout=timeout)


def _served_within(port: int, key: str, timeout: float) -> None:
    def served() -> dict | None:
        status, body = _call(
            port,
            key,
            "/v1/capabilities/text.summarize/invoke",
            {"text": "Streams store messages. Consumers read them.", "max_length": 40},
        )
        return body if status == 200 else None

    body = eventually_sync(
        served,
        "the platform to serve text.summarize",
        timeout=timeout,
        interval=0.2,
        ignoring=(urllib.error.HTTPError, urllib.error.URLError, OSError),
    )
    assert body["result"]["summary"], body


def test_a_killed_child_is_restarted_and_the_platform_serves_again(tmp_path: Path) -> None:
    data_dir, port = tmp_path / ".dai", free_port()
    process, _ = _start(data_dir, port, free_port())
    lines: list[str] = []
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        key = (data_dir / "admin.key").read_text().strip()
        module = _child(process, "module", "run", "--wait", "democratic_ai.sdk.examples.text_tools:TextTools")
        hub = _child(process, "hub")
        module.kill()
        hub.kill()
        for name, pid in (("module text-tools", module.pid), ("hub", hub.pid)):
            _wait_for_line(
                lines,
                rf"dai: [\d:]+ {name} \(pid {pid}\) exited with signal SIGKILL after [\d.]+ s;"
                r" restarting it in 0.5 s",
                timeout=10,
            )
            restarted = int(_wait_for_line(lines, rf"dai: [\d:]+ {name} restarted \(pid (\d+)\)", timeout=10).group(1))
            assert restarted != pid and psutil.pid_exists(restarted)
        _served_within(port, key, 30)  # the new module instance announces itself and serves
        assert process.poll() is None  # still up: one dead child does not stop the platform

        # The bus itself: restarted on the same store and port, every process resumes on it.
        bus = next(c for c in psutil.Process(process.pid).children() if c.name() == "nats-server")
        bus.kill()
        _wait_for_line(lines, rf"dai: [\d:]+ nats-server \(pid {bus.pid}\) exited with signal SIGKILL", timeout=10)
        _wait_for_line(lines, r"dai: [\d:]+ nats-server restarted \(pid \d+\)", timeout=15)
        _served_within(port, key, 15)
    finally:
        code = _stop_read(process, reader)
    assert code == 0 and "dai: stopping" in "".join(lines)


def test_up_cluster_runs_the_platform_on_three_servers_and_survives_losing_one(tmp_path: Path) -> None:
    data_dir, port, nats_port = tmp_path / ".dai", free_port(), free_port()
    while not all(_port_free(nats_port + n) for n in range(3)):  # the members take three ports in a row
        nats_port = free_port()
    process, banner = _start(data_dir, port, nats_port, "--cluster", "3")
    lines: list[str] = []
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        urls = ",".join(f"nats://127.0.0.1:{nats_port + n}" for n in range(3))
        assert f"nats     {urls}" in banner, banner
        key = (data_dir / "admin.key").read_text().strip()
        _served_within(port, key, 30)
        env = {**os.environ, **_exported(data_dir)}
        ensured = subprocess.run(
            [sys.executable, "-m", "democratic_ai.ops.cli", "streams", "ensure"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        for stream in (
            "MCP",
            "USAGE",
            "RATELIMIT",
            "IDENTITY",
            "BILLING",
            "REGISTRY",
            "KV_dai_jwt_keys",
            "KV_dai_user_keys",
        ):
            assert re.search(rf"^{stream} +3 replicas$", ensured, flags=re.MULTILINE), ensured
        members = [c for c in psutil.Process(process.pid).children() if c.name() == "nats-server"]
        assert len(members) == 3
        # The platform's processes spread over the members: each lists another one first.
        platform = [p for p in psutil.Process(process.pid).children() if "democratic_ai.ops.cli" in p.cmdline()]
        firsts = {p.environ()["NATS_URL"].split(",")[0] for p in platform}
        assert len(firsts) == 3, firsts
        members[0].kill()
        _wait_for_line(
            lines, rf"dai: [\d:]+ nats-server dai-\d \(pid {members[0].pid}\) exited with signal SIGKILL", timeout=10
        )
        _wait_for_line(lines, r"dai: [\d:]+ nats-server dai-\d restarted \(pid \d+\)", timeout=15)
        _served_within(port, key, 30)
    finally:
        code = _stop_read(process, reader)
    assert code == 0


def _stop_read(process: subprocess.Popen[str], reader: threading.Thread) -> int:
    """Stop ``dai up`` with Ctrl-C; its exit code, once ``reader`` has read all it printed."""
    assert process.stdout is not None
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(timeout=10)  # the pipe closes once dai up and its children are gone
        process.stdout.close()


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _exported(data_dir: Path) -> dict[str, str]:
    """The variables ``dai env`` exports for the dai up on ``data_dir``."""
    printed = subprocess.run(
        [sys.executable, "-m", "democratic_ai.ops.cli", "env", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    exported = {}
    for line in printed.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        exported[name] = shlex.split(value)[0]
    return exported


def test_a_taken_port_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "democratic_ai.ops.cli", "up", "--data-dir", str(tmp_path), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() + result.stderr.splitlines() if line.strip()]
    assert lines == [f"dai: port {port} is already in use (gateway); stop what is using it or pass --port"]
