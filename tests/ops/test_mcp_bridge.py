"""``dai module mcp``: a real MCP server, written with the official ``mcp`` SDK, published as a module.

The server is a file this test writes; ``dai module mcp`` runs it on stdio (and, in the last test,
connects to it over Streamable HTTP). Its tools are called through the HTTP gateway, as JSON and
as Server-Sent Events: the mapping of names, progress as chunks, a raising tool as MODULE_ERROR,
input checked against the tool's schema, hanging up reaching the server as a cancellation, and a
changed tool list served without a restart.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import mcp_types
import msgspec
import pytest

from democratic_ai.ops.mcp_tools import capability_name, map_tools
from democratic_ai.ops.ports import free_port
from democratic_ai.sdk.sse import read_events

from support.client import http
from support.gateway import Gateway
from support.names import unique
from support.waiting import eventually

pytestmark = pytest.mark.slow

SERVER = '''
import os
import sys
import threading

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("forecaster", version="1.2.0")


@server.tool()
async def countDown(steps: int, ctx: Context, delay: float = 0.0) -> str:
    """Count down, reporting each step as progress."""
    try:
        for i in range(steps):
            await ctx.report_progress(i + 1, steps, f"step {i + 1} of {steps}")
            await anyio.sleep(delay)  # paces the steps as the caller asked
    except anyio.get_cancelled_exc_class():
        with open("cancelled", "w") as marker:  # what the test looks for: the cancellation arrived
            marker.write(str(i))
        raise
    return "liftoff"


@server.tool(name="weather/explode")
def explode(reason: str) -> str:
    """Fail, always."""
    raise ToolError(f"the forecast service is down: {reason}")


@server.tool()
async def learn(ctx: Context) -> str:
    """Add a tool and say so."""
    server.add_tool(lambda text: text[::-1], name="reverse", description="Reverse a text.")
    await ctx.notify_tools_changed()  # the 2026-07-28 subscriptions/listen stream
    await ctx.request_context.session.send_tool_list_changed()  # a 2025-11-25 client hears this one
    return "learned"


@server.tool()
def quit() -> str:
    """Exit, half a second after answering."""
    threading.Timer(0.5, os._exit, (0,)).start()
    return "bye"


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
'''

SSE = {"Accept": "text/event-stream"}


def write_server(folder: Path) -> Path:
    path = folder / "forecaster.py"
    path.write_text(SERVER)
    return path


class Bridge:
    """A running ``dai module mcp``, its stderr (its log, and the stdio server's) read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    async def line(self, pattern: str, timeout: float = 30.0) -> str:
        """The first line, seen so far or to come, that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (self._reader.done() and self.process.returncode is not None):
            found = [line for line in self.lines if re.search(pattern, line)]
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))

    def count(self, text: str) -> int:
        return sum(1 for line in self.lines if text in line)

    async def exited(self, timeout: float = 15.0) -> int:
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"still running after {timeout} s:\n" + "\n".join(self.lines)) from None
        await asyncio.wait_for(self._reader, 5)
        return code

    async def stop(self, sig: int) -> int:
        self.process.send_signal(sig)
        return await self.exited()

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._reader.cancel()


async def start_bridge(*args: str, cwd: Path, env: dict[str, str]) -> Bridge:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DAI_BUS_", "NATS_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "democratic_ai.ops.cli",
        "module",
        "mcp",
        *args,
        cwd=cwd,
        env={**clean, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return Bridge(process)


async def output_of(*args: str, cwd: Path) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of a ``dai module mcp`` that is expected to end on its own."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "democratic_ai.ops.cli",
        "module",
        "mcp",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith(("DAI_BUS_", "NATS_"))},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def runs() -> AsyncIterator[list[Bridge]]:
    started: list[Bridge] = []
    yield started
    for run in started:
        await run.kill()


def invoke(gateway: Gateway, capability: str) -> str:
    return f"{gateway.url}/v1/capabilities/{capability}/invoke"


async def call(gateway: Gateway, capability: str, body: dict[str, Any], timeout: float = 15.0) -> tuple[int, dict]:
    """The JSON answer, retried while the gateway has not heard of the capability yet."""

    async def heard() -> tuple[int, dict] | None:
        status, answer = await http("POST", invoke(gateway, capability), headers=gateway.headers, json=body)
        code = answer.get("error", {}).get("code")
        return None if code in ("CAPABILITY_NOT_FOUND", "CAPABILITY_UNAVAILABLE") else (status, answer)

    return await eventually(heard, f"the gateway to route {capability}", timeout=timeout, interval=0.2)


async def sse(gateway: Gateway, capability: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    """The events of a call over SSE; a call refused before its first chunk is ``[("json", (status, body))]``."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(invoke(gateway, capability), json=body, headers={**gateway.headers, **SSE}) as response,
    ):
        if response.headers["Content-Type"].startswith("application/json"):
            return [("json", (response.status, await response.json()))]
        assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
        return [(name, msgspec.json.decode(data)) async for name, data in read_events(response.content)]


async def hang_up_mid_stream(gateway: Gateway, capability: str, folder: Path) -> float:
    """Seconds from hanging up an SSE call of a long count-down to the server's note of its cancellation."""
    marker = folder / "cancelled"
    marker.unlink(missing_ok=True)
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            invoke(gateway, capability), json={"steps": 1000, "delay": 0.05}, headers={**gateway.headers, **SSE}
        )
        assert response.status == 200
        first = await response.content.readuntil(b"\n\n")
        assert first.startswith(b"event: chunk"), first
        hung_up = time.monotonic()
        response.close()
    await eventually(marker.exists, "the MCP server to hear of the cancellation", timeout=10)
    return time.monotonic() - hung_up


async def register(gateway: Gateway, body: dict[str, Any], folder: Path) -> Path:
    status, answer = await http("POST", f"{gateway.url}/v1/modules", headers=gateway.headers, json=body)
    assert status == 201, answer
    path = folder / "bridge.credential"
    path.write_text(answer["credential"] + "\n")
    return path


@pytest.mark.parametrize(
    ("tool", "capability"),
    [
        ("getForecast", "w.get_forecast"),
        ("HTTPGet", "w.http_get"),
        ("files/read", "w.files_read"),
        ("a..b", "w.a.b"),
        ("...", "w.tool"),
        ("a.b.c.d.e.f.g.h.i", "w.a.b.c.d.e.f.g_h_i"),  # at most eight tokens
        ("x" * 80, "w." + "x" * 64),  # of at most 64 characters
    ],
)
def test_a_tool_name_becomes_a_capability_name(tool: str, capability: str) -> None:
    assert capability_name("w", tool) == capability


def test_tools_that_would_share_a_name_are_told_apart_in_the_order_of_their_names() -> None:
    tools = [mcp_types.Tool(name=name, input_schema={"type": "object"}) for name in ("getX", "get_x", "GetX")]
    assert [(m.tool, m.capability) for m in map_tools("w", tools)] == [
        ("GetX", "w.get_x"),
        ("getX", "w.get_x_2"),
        ("get_x", "w.get_x_3"),
    ]


async def test_list_and_registration_show_the_mapping_without_the_bus(tmp_path: Path) -> None:
    write_server(tmp_path)
    code, out, err = await output_of("--id", "forecast", "--list", "--", sys.executable, "forecaster.py", cwd=tmp_path)
    assert code == 0, err
    assert out.splitlines() == [
        "countDown        ->  forecast.count_down",
        "learn            ->  forecast.learn",
        "quit             ->  forecast.quit",
        "weather/explode  ->  forecast.weather_explode",
    ]
    code, out, err = await output_of(
        "--id",
        "forecast",
        "--prefix",
        "wx.tools",
        "--registration",
        "--",
        sys.executable,
        "forecaster.py",
        cwd=tmp_path,
    )
    assert code == 0, err
    assert msgspec.json.decode(out) == {
        "module_id": "forecast",
        "name": "forecaster",
        "capabilities": ["wx.tools.count_down", "wx.tools.learn", "wx.tools.quit", "wx.tools.weather_explode"],
    }
    code, out, err = await output_of(
        "--id",
        "forecast",
        "--tool",
        "countDown",
        "--tool",
        "weather/explode",
        "--list",
        "--",
        sys.executable,
        "forecaster.py",
        cwd=tmp_path,
    )
    assert (code, out.splitlines()) == (
        0,
        ["countDown        ->  forecast.count_down", "weather/explode  ->  forecast.weather_explode"],
    ), err
    code, out, err = await output_of(
        "--id", "forecast", "--tool", "count_down", "--list", "--", sys.executable, "forecaster.py", cwd=tmp_path
    )
    assert (code, out) == (2, ""), err
    # (what comes before is the server's own stderr: the SDK's warning about the name weather/explode)
    assert err.splitlines()[-1:] == [
        "dai: --tool count_down: the MCP server has no such tool (its tools: countDown, learn, quit, weather/explode)"
    ]


@pytest.mark.parametrize("protocol", ["auto", "2025-11-25"])
async def test_a_stdio_server_published_and_called_through_the_gateway(
    protocol: str,
    gateway: Gateway,
    bus_authorizer: None,
    hub: object,
    nats_server: Any,
    tmp_path: Path,
    runs: list[Bridge],
) -> None:
    """Through the gateway, over either revision: auto (2026-07-28 with this SDK's server) and the
    initialize handshake of 2025-11-25."""
    write_server(tmp_path)
    module_id = unique("forecast")
    server = ("--protocol", protocol, "--", sys.executable, "forecaster.py")
    code, out, err = await output_of("--id", module_id, "--registration", *server, cwd=tmp_path)
    assert code == 0, err
    body = msgspec.json.decode(out)
    body["capabilities"].append(f"{module_id}.reverse")  # the tool learn adds: registered ahead
    credential = await register(gateway, body, tmp_path)
    run = await start_bridge(
        "--id",
        module_id,
        "--credential-file",
        str(credential),
        *server,
        cwd=tmp_path,
        env={"NATS_URL": nats_server.url},
    )
    runs.append(run)
    await run.line(f"tool countDown -> capability {module_id}.count_down")
    await run.line(f"\\(protocol {'2026-07-28' if protocol == 'auto' else protocol}\\): 4 tool\\(s\\)")
    await run.line(
        f"module {module_id} of tenant {gateway.tenant} serving {module_id}.count_down, "
        f"{module_id}.learn, {module_id}.quit, {module_id}.weather_explode on NATS"
    )

    # JSON: the tool's structured result.
    status, answer = await call(gateway, f"{module_id}.count_down", {"steps": 3})
    assert (status, answer.get("result"), answer.get("module_id")) == (200, {"result": "liftoff"}, module_id), (
        answer,
        "\n".join(run.lines),
    )

    # SSE: each progress notification a chunk, then the result, then done.
    events = await sse(gateway, f"{module_id}.count_down", {"steps": 3})
    assert [name for name, _ in events] == ["chunk"] * 4 + ["done"], events
    assert [e.get("progress") for _, e in events[:3]] == [
        {"fraction": pytest.approx(i / 3), "message": f"step {i} of 3"} for i in (1, 2, 3)
    ]
    assert events[3][1]["data"] == {"result": "liftoff"}
    assert events[4][1]["chunks"] == 4

    # The tool's own input schema is checked before anything reaches the server.
    status, answer = await call(gateway, f"{module_id}.count_down", {"steps": "three"})
    assert (status, answer["error"]["code"], answer["error"]["details"]["path"]) == (
        422,
        "VALIDATION_FAILED",
        "$.steps",
    )

    # A tool error (isError) is a module error carrying the tool's text, as JSON and over SSE.
    status, answer = await call(gateway, f"{module_id}.weather_explode", {"reason": "rain"})
    assert (status, answer["error"]["code"]) == (502, "MODULE_ERROR"), answer
    assert answer["error"]["message"] == "Error executing tool weather/explode: the forecast service is down: rain"
    assert answer["error"]["details"]["tool"] == "weather/explode"
    [(kind, (status, answer))] = await sse(gateway, f"{module_id}.weather_explode", {"reason": "snow"})
    assert (kind, status, answer["error"]["code"]) == ("json", 502, "MODULE_ERROR"), answer

    # Hanging up the SSE stream cancels the tools/call at the server.
    assert await hang_up_mid_stream(gateway, f"{module_id}.count_down", tmp_path) < 2.0

    # The server's tool list changes: the bridge serves the new tool without a restart.
    status, answer = await call(gateway, f"{module_id}.learn", {})
    assert (status, answer["result"]) == (200, {"result": "learned"}), answer
    await run.line(f"the MCP server's tools changed: now serving .*{module_id}\\.reverse")
    status, answer = await call(gateway, f"{module_id}.reverse", {"text": "abc"})
    # Without an outputSchema, a tool answers its content blocks.
    assert (status, answer["result"]) == (200, {"content": [{"type": "text", "text": "cba"}]}), answer
    status, answer = await call(gateway, f"{module_id}.count_down", {"steps": 1})  # the old tools still answer
    assert status == 200, answer

    # The server exits (half a second after answering): the bridge notices without a call, leaves, exits 1.
    status, answer = await call(gateway, f"{module_id}.quit", {})
    assert (status, answer["result"]) == (200, {"result": "bye"}), answer
    code = await run.exited()
    assert run.lines[-1] == "dai: the MCP server '" + " ".join(server[3:]) + "' closed the connection", run.lines

    assert (code, run.count("Traceback")) == (1, 0), run.lines


async def test_a_streamable_http_server_by_url(
    gateway: Gateway, bus_authorizer: None, hub: object, nats_server: Any, tmp_path: Path, runs: list[Bridge]
) -> None:
    write_server(tmp_path)
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "forecaster.py",
        "http",
        str(port),
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        module_id = unique("forecast")
        said: list[str] = []

        async def registration() -> str | None:  # once the server listens
            code, out, err = await output_of("--id", module_id, "--url", url, "--registration", cwd=tmp_path)
            said[:] = [err]
            return out if code == 0 else None

        out = await eventually(
            registration, lambda: f"the MCP server to listen and describe itself; said {said}", timeout=20, interval=0.3
        )
        credential = await register(gateway, msgspec.json.decode(out), tmp_path)
        run = await start_bridge(
            "--id",
            module_id,
            "--url",
            url,
            "--header",
            "X-Test: yes",
            "--credential-file",
            str(credential),
            cwd=tmp_path,
            env={"NATS_URL": nats_server.url},
        )
        runs.append(run)
        await run.line(f"module {module_id} of tenant {gateway.tenant} serving")
        status, answer = await call(gateway, f"{module_id}.count_down", {"steps": 2})
        assert (status, answer["result"]) == (200, {"result": "liftoff"}), answer
        events = await sse(gateway, f"{module_id}.count_down", {"steps": 2})
        assert [e.get("progress", {}).get("fraction") for _, e in events[:2]] == [0.5, 1.0], events
        status, answer = await call(gateway, f"{module_id}.weather_explode", {"reason": "fog"})
        assert (status, answer["error"]["code"]) == (502, "MODULE_ERROR"), answer
        assert answer["error"]["message"].endswith("the forecast service is down: fog"), answer
        assert await hang_up_mid_stream(gateway, f"{module_id}.count_down", tmp_path) < 2.0
        code = await run.stop(signal.SIGINT)
        assert (code, run.count("Traceback")) == (0, 0), run.lines
    finally:
        server.terminate()
        await server.wait()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--id", "Weather", "--", "x"], "--id 'Weather' is not a valid name"),
        (["--id", "w"], "give the MCP server to publish"),
        (["--id", "w", "--url", "http://127.0.0.1:1/mcp", "--", "x"], "not both"),
        (["--id", "w", "--header", "X: y", "--", "x"], "--header goes with --url"),
        (["--id", "w", "--url", "ftp://x/mcp", "--list"], "--url must be an http:// or https:// URL"),
        (["--id", "w", "--env", "NO_SUCH_VARIABLE_HERE", "--list", "--", "x"], "there is no NO_SUCH_VARIABLE_HERE"),
        (["--id", "w", "--prefix", "A..b", "--list", "--", "x"], "capability 'A..b' is not a valid name"),
        (["--id", "w", "--list", "--", "no-such-command-here"], "there is no command 'no-such-command-here'"),
        (["--id", "w", "--", "x"], "no bus credential"),
    ],
)
async def test_what_cannot_work_is_one_line_and_exit_code_2(args: list[str], said: str, tmp_path: Path) -> None:
    code, out, err = await output_of(*args, cwd=tmp_path)
    lines = err.splitlines()
    assert (code, out) == (2, ""), err
    assert len(lines) == 1 and lines[0].startswith("dai: ") and said in lines[0], lines


async def test_an_mcp_server_that_cannot_be_reached_is_one_line_and_exit_code_1(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    code, out, err = await output_of("--id", "w", "--url", url, "--list", cwd=tmp_path)
    assert (code, out) == (1, ""), err
    assert err.splitlines() == [f"dai: cannot reach the MCP server at {url}: All connection attempts failed"]


async def test_unreachable_nats_is_one_line_and_exit_code_1(tmp_path: Path) -> None:
    """Once the server is up and its tools listed, NATS that is not there ends it as it ends dai module run."""
    write_server(tmp_path)
    url = f"nats://127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "democratic_ai.ops.cli",
        "module",
        "mcp",
        "--id",
        "w",
        "--",
        sys.executable,
        "forecaster.py",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("DAI_BUS_", "NATS_"))},
            "NATS_URL": url,
            "DAI_BUS_CREDENTIAL": "dai-role.operator.x",
        },
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert (process.returncode, out) == (1, b""), err
    assert err.decode().splitlines()[-1] == (
        f"dai: cannot connect to NATS at {url}: connection refused (nothing listens there). Is the platform running"
        " (dai up)? Check NATS_URL, or pass --wait to keep trying."
    )
    assert b"Traceback" not in err
