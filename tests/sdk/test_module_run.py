"""``dai module run`` as a user meets it: real subprocesses, a real nats-server.

It serves a class from the folder holding its file (``shout:Shout``), from a path
(``./sub/shout.py:Shout``) and from a dotted module path; refuses a bad spec, class or credential
with one ``dai:`` line and exit code 2; fails fast with one line (exit 1) when NATS is not there,
or with ``--wait`` keeps trying and says so; says in one line each that it lost and regained NATS;
and stops promptly on SIGINT or SIGTERM at every stage: connecting, announcing, serving, draining.
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

import pytest

from democratic_ai.contracts.bus import CREDENTIAL_FILE_ENV, connect
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.ports import free_port
from democratic_ai.sdk import Client

from support.bus import register
from support.client import http
from support.gateway import Gateway
from support.names import unique
from support.waiting import eventually

pytestmark = pytest.mark.slow

PROMPTLY = 5.0  # seconds a signalled module may take to exit (it has no call in progress to wait for)

SHOUT = """
import asyncio

from democratic_ai.sdk import Module, capability


class Shout(Module):
    module_id = "{module_id}"

    @capability(
        "text.shout",
        input_schema={{"type": "object", "properties": {{"text": {{"type": "string"}}}}, "required": ["text"]}},
        output_schema={{"type": "object", "properties": {{"text": {{"type": "string"}}}}}},
        description="Upper-case a text.",
    )
    async def shout(self, text: str) -> dict:
        return {{"text": text.upper() + "!"}}

    @capability("test.nap", {{"type": "object", "properties": {{"seconds": {{"type": "number"}}}}}})
    async def nap(self, seconds: float = 30.0) -> dict:
        print("napping", flush=True)
        await asyncio.sleep(seconds)
        return {{"slept": seconds}}


def helper() -> None:
    pass
"""


def write_shout(folder: Path, module_id: str, name: str = "shout.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(SHOUT.format(module_id=module_id))
    return path


class Run:
    """A ``dai module run`` subprocess whose stderr is read line by line as it comes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str, cwd: Path, env: dict[str, str]) -> Run:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("DAI_BUS_", "NATS_"))}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "democratic_ai.ops.cli",
            "module",
            "run",
            *args,
            cwd=cwd,
            env={**clean, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            self._new.set()

    async def line(self, pattern: str, timeout: float = 15.0) -> str:
        """The first line (seen so far or to come) that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if re.search(pattern, line):
                    return line
            left = deadline - time.monotonic()
            if left <= 0 or (self.process.returncode is not None and self._reader.done()):
                raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), min(left, 0.5))
            except TimeoutError:
                pass

    def count(self, text: str) -> int:
        """How many lines hold ``text``."""
        return sum(1 for line in self.lines if text in line)

    async def exited(self, timeout: float = PROMPTLY) -> tuple[int, float]:
        """The exit code, and how long it took from now."""
        started = time.monotonic()
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"still running after {timeout} s:\n" + "\n".join(self.lines)) from None
        await asyncio.wait_for(self._reader, 5)
        return code, time.monotonic() - started

    async def stop(self, sig: int = signal.SIGINT) -> tuple[int, float]:
        self.process.send_signal(sig)
        return await self.exited()

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._reader.cancel()


@pytest.fixture
async def runs() -> AsyncIterator[list[Run]]:
    """Every subprocess a test starts is killed at its end, whatever happened."""
    started: list[Run] = []
    yield started
    for run in started:
        await run.kill()


@pytest.fixture
def own_nats(tmp_path: Path) -> NatsServer:
    """A nats-server of the test's own on a fixed port, not started: the test decides when."""
    return NatsServer(tmp_path / "own-nats", port=free_port())


def operator_env(server: NatsServer) -> dict[str, str]:
    """What makes ``dai`` connect to ``server`` as the operator (a platform role: tenant ``system``),
    started or not."""
    port = server.port if server._proc is not None else server._requested_port
    return {"NATS_URL": f"nats://127.0.0.1:{port}", CREDENTIAL_FILE_ENV: str(server.credentials.file("operator"))}


async def test_a_module_runs_from_its_folder_from_a_path_and_by_module_path(
    nats_server: NatsServer, tmp_path: Path, runs: list[Run]
) -> None:
    module_id = unique("shout")
    write_shout(tmp_path / "here", module_id)
    write_shout(tmp_path / "pkg" / "mods", module_id, "loud.py")
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "mods" / "__init__.py").write_text("")
    nc = await connect(nats_server.bus("operator"), "module-run-test")
    client = Client(nc, tenant=unique("t"))
    try:
        for spec, cwd in [
            ("shout:Shout", tmp_path / "here"),  # next to shout.py, as the README says
            ("./here/shout.py:Shout", tmp_path),  # a path
            ("pkg.mods.loud:Shout", tmp_path),
        ]:  # a dotted module path
            run = await Run.start(spec, cwd=cwd, env=operator_env(nats_server))
            runs.append(run)
            await run.line(rf"module {module_id} of tenant system serving test\.nap, text\.shout on NATS")
            answer = await client.call("text.shout", {"text": "hi"}, target_module_id=module_id)
            assert answer == {"text": "HI!"}, spec
            code, _took = await run.stop()
            assert (code, run.count("Traceback")) == (0, 0), (spec, run.lines)
    finally:
        await nc.close()


MISMATCHED = """
from democratic_ai.sdk import Module, capability

class Shout(Module):
    module_id = "shout"

    @capability("text.shout", {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})
    async def shout(self, txt: str) -> dict:
        return {"text": txt}
"""

OTHER_MODULE = "dai-module.acme.other." + "a" * 43


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["shout"], {}, "expected MODULE:CLASS"),
        (["nowhere:Shout"], {}, "no module named 'nowhere'"),
        (["shout:Shoot"], {}, "has no 'Shoot' (its Module classes: Shout)"),
        (["shout:helper"], {}, "is a function, not a subclass of democratic_ai.sdk.Module"),
        (["./missing.py:Shout"], {}, "there is no file missing.py"),
        (
            ["broken:Shout"],
            {},
            "importing 'broken' failed: NameError: name 'undefined' is not defined (broken.py, line 2)",
        ),
        (["mismatched:Shout"], {}, "has no parameter 'text', but the input schema requires property 'text'"),
        (["shout:Shout"], {"DAI_BUS_CREDENTIAL": ""}, "no bus credential"),
        (
            ["shout:Shout", "--credential-file", "absent.credential"],
            {},
            "cannot read the bus credential file absent.credential",
        ),
        (["shout:Shout", "--credential-file", "."], {}, "Is a directory"),
        (["shout:Shout", "--credential-file", "binary.credential"], {}, "is not text"),
        (["shout:Shout"], {"DAI_BUS_CREDENTIAL": OTHER_MODULE}, "the credential is for module 'other'"),
        (["shout:Shout"], {"DAI_BUS_CREDENTIAL": "dai-module.acme.shout"}, "a module credential has the form"),
    ],
)
async def test_what_cannot_work_is_one_line_and_exit_code_2(
    args: list[str], env: dict[str, str], said: str, tmp_path: Path, runs: list[Run]
) -> None:
    write_shout(tmp_path, "shout")
    (tmp_path / "broken.py").write_text("import os\nundefined\n")
    (tmp_path / "mismatched.py").write_text(MISMATCHED)
    (tmp_path / "binary.credential").write_bytes(b"\xff\xfe\x00credential")
    # Nothing listens on this port: none of these may get as far as connecting.
    run = await Run.start(
        *args,
        cwd=tmp_path,
        env={"NATS_URL": f"nats://127.0.0.1:{free_port()}", "DAI_BUS_CREDENTIAL": "dai-role.operator.unused", **env},
    )
    runs.append(run)
    code, _ = await run.exited(timeout=20)  # the time to start Python and import: a loaded machine is slow
    assert code == 2, run.lines
    assert len(run.lines) == 1 and run.lines[0].startswith("dai: ") and said in run.lines[0], run.lines


async def test_unreachable_nats_is_one_line_and_exit_code_1(tmp_path: Path, runs: list[Run]) -> None:
    write_shout(tmp_path, unique("shout"))
    url = f"nats://127.0.0.1:{free_port()}"
    run = await Run.start(
        "shout:Shout", cwd=tmp_path, env={"NATS_URL": url, "DAI_BUS_CREDENTIAL": "dai-role.operator.x"}
    )
    runs.append(run)
    code, _ = await run.exited(timeout=20)
    assert code == 1
    assert run.process.stdout is not None and await run.process.stdout.read() == b""
    assert run.lines == [
        (
            f"dai: cannot connect to NATS at {url}: connection refused (nothing listens there). Is the"
            " platform running (dai up)? Check NATS_URL, or pass --wait to keep trying."
        )
    ]


async def test_wait_keeps_trying_with_backoff_then_serves(
    own_nats: NatsServer, tmp_path: Path, runs: list[Run]
) -> None:
    module_id = unique("shout")
    write_shout(tmp_path, module_id)
    run = await Run.start("shout:Shout", "--wait", cwd=tmp_path, env=operator_env(own_nats))
    runs.append(run)
    await run.line(r"trying again in 1 s \(attempt 2, --wait\)")  # 0.5 s, then 1 s, …: it backs off
    assert run.count("trying again in 0.5 s (attempt 1, --wait)") == 1, run.lines
    own_nats.start()
    try:
        await run.line(rf"module {module_id} of tenant system serving")
        assert run.process.returncode is None
        code, _ = await run.stop(signal.SIGTERM)
        assert (code, run.count("Traceback")) == (0, 0), run.lines
    finally:
        own_nats.stop()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_while_connecting_stops_it(sig: int, tmp_path: Path, runs: list[Run]) -> None:
    write_shout(tmp_path, unique("shout"))
    env = {"NATS_URL": f"nats://127.0.0.1:{free_port()}", "DAI_BUS_CREDENTIAL": "dai-role.operator.x"}
    run = await Run.start("shout:Shout", "--wait", cwd=tmp_path, env=env)
    runs.append(run)
    await run.line("trying again")
    code, took = await run.stop(sig)
    assert code == 0 and took < PROMPTLY, run.lines


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_while_announcing_stops_it(
    sig: int, own_nats: NatsServer, tmp_path: Path, runs: list[Run]
) -> None:
    """No hub runs on this server: the module serves, and announces again and again, until stopped."""
    module_id = unique("shout")
    write_shout(tmp_path, module_id)
    own_nats.start()
    try:
        run = await Run.start("shout:Shout", cwd=tmp_path, env=operator_env(own_nats))
        runs.append(run)
        await run.line(f"no hub answered the announcement of {module_id}; retrying")
        code, took = await run.stop(sig)
        assert code == 0 and took < PROMPTLY, run.lines
    finally:
        own_nats.stop()


async def test_a_signal_while_draining_waits_for_calls_and_a_second_one_stops_at_once(
    nats_server: NatsServer, tmp_path: Path, runs: list[Run]
) -> None:
    module_id = unique("shout")
    write_shout(tmp_path, module_id)
    run = await Run.start("shout:Shout", cwd=tmp_path, env=operator_env(nats_server))
    runs.append(run)
    await run.line(f"module {module_id} of tenant system serving")
    nc = await connect(nats_server.bus("operator"), "module-run-test")
    try:
        client = Client(nc, tenant=unique("t"))
        napping = asyncio.create_task(client.call("test.nap", {"seconds": 30}, target_module_id=module_id, ttl=60))
        short = asyncio.create_task(client.call("test.nap", {"seconds": 1}, target_module_id=module_id, ttl=60))
        assert run.process.stdout is not None
        for _ in range(2):  # both calls reach their handler
            assert await asyncio.wait_for(run.process.stdout.readline(), 10) == b"napping\n"
        run.process.send_signal(signal.SIGINT)
        await run.line(r"stopping: waiting up to 10 s for 2 call\(s\) in progress")
        assert await asyncio.wait_for(short, 5) == {"slept": 1}  # draining: a call in progress finishes
        assert run.process.returncode is None  # … and the long one is still given its time
        code, took = await run.stop(signal.SIGINT)  # the user insists
        assert code == 0 and took < PROMPTLY, run.lines
        assert run.count("stopped at once; calls still in progress were cut short") == 1, run.lines
        assert run.count("Traceback") == 0, run.lines
        napping.cancel()
        await asyncio.gather(napping, return_exceptions=True)
    finally:
        await nc.close()


async def test_lost_and_regained_nats_is_one_line_each_and_it_serves_again(
    own_nats: NatsServer, tmp_path: Path, runs: list[Run]
) -> None:
    module_id = unique("shout")
    write_shout(tmp_path, module_id)
    own_nats.start()
    try:
        run = await Run.start("shout:Shout", cwd=tmp_path, env=operator_env(own_nats))
        runs.append(run)
        await run.line(f"module {module_id} of tenant system serving")
        own_nats.kill()
        await run.line(f"lost the connection to NATS at {own_nats.url}; reconnecting")
        await asyncio.sleep(2)  # a window for what must not be said: eight failed attempts to reconnect, each silent
        own_nats.start()
        await run.line(rf"reconnected to NATS at {re.escape(own_nats.url)} after \d+\.\d s")
        nc = await connect(own_nats.bus("operator"), "module-run-test")
        try:
            answer = await Client(nc, tenant=unique("t")).call(
                "text.shout", {"text": "back"}, target_module_id=module_id
            )
            assert answer == {"text": "BACK!"}
        finally:
            await nc.close()
        own_nats.kill()  # and Ctrl-C while NATS is away: nothing to drain, no waiting for it
        await run.line("lost the connection", timeout=5)
        code, took = await run.stop()
        assert code == 0 and took < PROMPTLY, run.lines
        assert (run.count("lost the connection"), run.count("reconnected to NATS")) == (2, 1), run.lines
        assert run.count("Traceback") == 0 and run.count("NATS: ") == 0, run.lines
    finally:
        own_nats.stop()


async def test_the_readme_way_a_module_credential_from_the_gateway(
    nats_server: NatsServer, gateway: Gateway, bus_authorizer: None, hub: object, tmp_path: Path, runs: list[Run]
) -> None:
    """Register, keep the credential in a file, run next to shout.py, call it through the gateway."""
    module_id = unique("shout")
    write_shout(tmp_path, module_id)
    credential = await register(gateway, module_id, ["text.shout", "test.nap"])
    (tmp_path / "shout.credential").write_text(credential + "\n")
    run = await Run.start(
        "shout:Shout", "--credential-file", "shout.credential", cwd=tmp_path, env={"NATS_URL": nats_server.url}
    )
    runs.append(run)
    await run.line(f"module {module_id} of tenant {gateway.tenant} serving")

    async def served() -> dict | None:
        status, body = await http(
            "POST",
            f"{gateway.url}/v1/capabilities/text.shout/invoke?module={module_id}",
            headers=gateway.headers,
            json={"text": "hi"},
        )
        return body if status == 200 else None

    body = await eventually(served, "the gateway to route to the module", timeout=15, interval=0.2)
    assert body["result"] == {"text": "HI!"}, body
    status, body = await http(
        "POST", f"{gateway.url}/v1/capabilities/text.shout/invoke?module={module_id}", headers=gateway.headers, json={}
    )
    assert status == 422 and body["error"]["details"]["path"] == "$.text", body
    code, _ = await run.stop()
    assert (code, run.count("Traceback")) == (0, 0), run.lines


async def test_a_revoked_credential_is_one_line_and_a_signal_still_stops_it(
    nats_server: NatsServer, gateway: Gateway, bus_authorizer: None, tmp_path: Path, runs: list[Run]
) -> None:
    """The bus drops a revoked module and refuses it on reconnecting (four attempts a second): one line says
    so, not one per attempt, and Ctrl-C stops it at once."""
    module_id = unique("shout")
    write_shout(tmp_path, module_id)
    credential = await register(gateway, module_id, ["text.shout", "test.nap"])
    run = await Run.start(
        "shout:Shout", cwd=tmp_path, env={"NATS_URL": nats_server.url, "DAI_BUS_CREDENTIAL": credential}
    )
    runs.append(run)
    await run.line(f"module {module_id} of tenant {gateway.tenant} serving")
    status, body = await http("DELETE", f"{gateway.url}/v1/modules/{module_id}", headers=gateway.headers)
    assert status in (200, 204), body
    await run.line("lost the connection to NATS")
    await run.line("the server refused the credential .*; still trying")
    await asyncio.sleep(2)  # a window for what must not be said: eight more refusals
    assert run.count("refused the credential") == 1, run.lines
    code, took = await run.stop()
    assert code == 0 and took < PROMPTLY, run.lines
    assert run.count("Traceback") == 0, run.lines


async def test_a_credential_the_bus_refuses_at_start_is_one_line_and_exit_code_1(
    nats_server: NatsServer, bus_authorizer: None, tmp_path: Path, runs: list[Run]
) -> None:
    """Well-formed and for this module id, but never issued: the bus refuses it, and without --wait that is the end."""
    module_id = unique("shout")
    write_shout(tmp_path, module_id)
    forged = f"dai-module.acme.{module_id}." + "f" * 43
    run = await Run.start("shout:Shout", cwd=tmp_path, env={"NATS_URL": nats_server.url, "DAI_BUS_CREDENTIAL": forged})
    runs.append(run)
    code, _ = await run.exited(timeout=15)
    assert code == 1, run.lines
    assert len(run.lines) == 1 and run.lines[0].startswith(
        f"dai: cannot connect to NATS at {nats_server.url}: the server refused the credential"
    ), run.lines
