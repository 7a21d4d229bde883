"""The committed generated code matches the .proto contract, and the public surfaces are curated."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest


def test_generated_code_is_current(repo_root: Path, tmp_path: Path) -> None:
    contracts = repo_root / "contracts"
    protos = sorted(p.name for p in contracts.glob("*.proto"))
    assert protos, "no .proto files found"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{contracts}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            *protos,
        ],
        check=True,
    )
    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated, "protoc generated nothing"
    stale = [name for name in generated if (contracts / name).read_bytes() != (tmp_path / name).read_bytes()]
    assert not stale, (
        "regenerate with: python -m grpc_tools.protoc -Icontracts --python_out=contracts --pyi_out=contracts"
        f" contracts/*.proto ({stale})"
    )


def test_mcp_message_round_trips() -> None:
    from democratic_ai.contracts import ErrorCode, MessageType, decode, error_details, error_reply, new_request

    request = new_request("text.summarize", b'{"text": "x"}', tenant_id="acme", source_module_id="t", priority=9, ttl=3)
    again = decode(request.SerializeToString())
    assert again == request
    assert again.type == MessageType.REQUEST and again.correlation_id == again.id
    assert (again.priority, again.ttl, again.context.tenant_id) == (9, 3, "acme")
    error = error_reply(request, ErrorCode.TIMEOUT, "late", source_module_id="hub", details={"ttl": 3})
    assert error.correlation_id == request.id and error_details(error) == {"ttl": 3}


def test_stream_chunks_carry_sequence_progress_and_final() -> None:
    from democratic_ai.contracts import MessageType, decode, new_request, streaming
    from democratic_ai.contracts.headers import MCP_CONTROL

    request = new_request("image.upscale", b"{}", tenant_id="acme", source_module_id="t")
    started = decode(
        streaming.chunk(request, 0, b"", source_module_id="m", fraction=0.0, status="queued").SerializeToString()
    )
    assert started.type == MessageType.STREAM_CHUNK and started.correlation_id == request.correlation_id
    assert started.progress.HasField("fraction") and started.progress.fraction == 0.0  # 0 is not "unknown"
    assert not started.payload and not started.final
    data = decode(streaming.chunk(request, 1, b'{"x": 1}', source_module_id="m", final=True).SerializeToString())
    assert (data.sequence, data.final, data.payload, data.HasField("progress")) == (1, True, b'{"x": 1}', False)
    accepted = streaming.accepted(request, "mcp.ctl.m.m-1", source_module_id="m")
    assert accepted.type == MessageType.ACCEPTED and accepted.headers[MCP_CONTROL] == "mcp.ctl.m.m-1"


@pytest.mark.parametrize(
    ("package", "names"),
    [
        ("democratic_ai.sdk", {"Module", "capability", "Client", "HttpClient", "CallError", "Chunk", "event_handler"}),
        ("democratic_ai.contracts", {"MCPMessage", "ErrorCode", "new_request", "new_event", "ensure_streams"}),
        ("democratic_ai.hub", {"Hub", "Router", "CallStream", "PresenceIndex", "RegistryIndex"}),
        ("democratic_ai.services.gateway", {"GatewayConfig", "create_app", "create_runner"}),
        ("democratic_ai.projections", {"ProjectionRunner", "rebuild", "PROJECTIONS"}),
    ],
)
def test_public_surface_is_explicit(package: str, names: set[str]) -> None:
    module = importlib.import_module(package)
    exported = set(module.__all__)
    assert names <= exported
    assert all(hasattr(module, name) for name in exported)
    assert exported == {n for n in exported if not n.startswith("_")}


def test_every_package_folder_is_installed(repo_root: Path) -> None:
    """A package folder missing from pyproject.toml works in a checkout and breaks on install."""
    import tomllib

    setuptools = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {(repo_root / folder).resolve(): name for name, folder in setuptools["package-dir"].items()}
    assert set(mapped.values()) == set(setuptools["packages"])
    tops = {"contracts", "hub", "projections", "services", "sdk", "ops", "schemas"}
    folders = {init.parent.resolve() for top in tops for init in (repo_root / top).rglob("__init__.py")}
    assert folders == set(mapped), f"not installed: {sorted(map(str, folders - set(mapped)))}"


def test_message_ids_are_unique_version_4_uuids() -> None:
    from democratic_ai.contracts.ids import new_id

    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for value in (ids[0], ids[-1]):
        parsed = uuid.UUID(value)
        assert str(parsed) == value  # canonical lowercase form
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


# Python 3.12+ warns about fork() in a process with threads; the child here only writes one id.
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_draws_ids_of_its_own() -> None:
    """A child of ``fork`` must not repeat its parent's ids: it gets a new random prefix."""
    from democratic_ai.contracts.ids import new_id

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one id and leave without running pytest's teardown
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = new_id()
    assert uuid.UUID(child).version == 4
    assert child[:24] != parent[:24]


@pytest.mark.parametrize(
    ("age", "ttl", "left"),
    [
        (0.0, 30, 30.0),
        (29.0, 30, 1.0),
        (31.0, 30, -1.0),
        (-5.0, 30, 30.0),  # stamped "in the future" (the clock stepped back since): the ttl is not lengthened
    ],
)
def test_a_request_made_here_has_its_ttl_from_its_timestamp(
    age: float, ttl: int, left: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    from democratic_ai.contracts import deadlines, new_request

    request = new_request("text.summarize", b"{}", tenant_id="acme", source_module_id="t", ttl=ttl)
    sent = request.timestamp.ToNanoseconds() / 1e9
    monkeypatch.setattr(time, "time", lambda: sent + age)
    monkeypatch.setattr(time, "monotonic", lambda: 100.0)
    assert deadlines.made_here(request) == pytest.approx(100.0 + left)
    request.ttl = 0
    assert deadlines.made_here(request) is None  # no ttl: no deadline


def test_a_received_request_has_the_time_its_sender_said_was_left(monkeypatch: pytest.MonkeyPatch) -> None:
    from democratic_ai.contracts import deadlines, new_request
    from democratic_ai.contracts.headers import DAI_REMAINING_MS

    request = new_request("text.summarize", b"{}", tenant_id="acme", source_module_id="t", ttl=30)
    request.timestamp.FromSeconds(0)  # whatever the sender's clock said: never read
    header = DAI_REMAINING_MS
    assert deadlines.received(request, {header: "1500"}, arrived=50.0) == pytest.approx(51.5)
    assert deadlines.received(request, {header: "-20"}, arrived=50.0) == pytest.approx(49.98)
    assert deadlines.received(request, {header: "soon"}, arrived=50.0) == pytest.approx(80.0)  # unreadable: the ttl
    assert deadlines.received(request, None, arrived=50.0) == pytest.approx(80.0)
    request.ttl = 0
    assert deadlines.received(request, {}, arrived=50.0) is None
    monkeypatch.setattr(time, "monotonic", lambda: 10.0)
    assert deadlines.remaining_header(12.3456) == "2345"
    assert deadlines.remaining_header(9.9995) == "-1"  # rounded down: a hop never waits longer than its caller


def test_messages_carry_their_timestamp() -> None:
    from democratic_ai.contracts import new_request, reply

    before = time.time_ns()
    request = new_request("text.summarize", b"{}", tenant_id="acme", source_module_id="t")
    response = reply(request, b"{}", source_module_id="m")
    after = time.time_ns()
    assert before <= request.timestamp.ToNanoseconds() <= response.timestamp.ToNanoseconds() <= after
    assert response.correlation_id == request.id != response.id


def test_messages_built_field_by_field_are_the_bytes_the_constructor_makes() -> None:
    """new_request, reply and error_reply set fields one by one for speed; the wire and the log see
    exactly what the keyword constructor would have made, an empty context included."""
    from democratic_ai.contracts import (
        Context,
        Error,
        ErrorCode,
        MCPMessage,
        MessageType,
        error_reply,
        new_request,
        reply,
    )

    def same(built: MCPMessage, **fields: object) -> None:
        expected = MCPMessage(id=built.id, **fields)
        expected.timestamp.CopyFrom(built.timestamp)
        assert built.SerializeToString() == expected.SerializeToString()

    request = new_request(
        "text.summarize",
        b'{"t": 1}',
        tenant_id="acme",
        source_module_id="t",
        user_id="u",
        api_key_id="k",
        target_module_id="m",
        priority=9,
        ttl=3,
    )
    same(
        request,
        type=MessageType.REQUEST,
        source_module_id="t",
        target_module_id="m",
        action="text.summarize",
        context=Context(tenant_id="acme", user_id="u", api_key_id="k"),
        payload=b'{"t": 1}',
        correlation_id=request.id,
        priority=9,
        ttl=3,
        content_type="application/json",
    )
    response = reply(request, b"{}", source_module_id="m")
    same(
        response,
        type=MessageType.RESPONSE,
        source_module_id="m",
        target_module_id="t",
        action="text.summarize",
        context=request.context,
        payload=b"{}",
        correlation_id=request.id,
        content_type="application/json",
    )
    error = error_reply(request, ErrorCode.TIMEOUT, "late", source_module_id="hub", details={"ttl": 3})
    same(
        error,
        type=MessageType.ERROR,
        source_module_id="hub",
        target_module_id="t",
        action="text.summarize",
        context=request.context,
        correlation_id=request.id,
        error=Error(code="TIMEOUT", message="late", details=b'{"ttl":3}'),
    )
    bare = reply(MCPMessage(action="x.y"), b"", source_module_id="m")  # a request without a context
    assert bare.HasField("context")
    same(
        bare,
        type=MessageType.RESPONSE,
        source_module_id="m",
        action="x.y",
        context=Context(),
        content_type="application/json",
    )
