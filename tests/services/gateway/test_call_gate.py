"""The call gate is the only place in the gateway where a call is admitted, routed and metered.

Every transport (the JSON invoke, SSE, the WebSocket, later MCP and gRPC) hands its calls to
:class:`~democratic_ai.services.gateway.gate.CallGate`; a transport that admitted or metered a
call itself would be a second set of rules that could drift (as they once did: a timed-out call
metered ``failed`` for one metric and ``success`` for another). The outcome of each transport's
calls is tested end to end in tests/services/metering/test_usage_outcomes.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import democratic_ai.services.gateway as gateway

GATEWAY_DIR = Path(gateway.__file__).parent
# What only the gate may do with a call: admit it, route it, meter its end.
GATE_ONLY = {"admit", "open_stream", "record", "call"}
GATE_ONLY_RECEIVERS = {"_metering", "_router", "metering", "router", "METERING"}


def _name(node: ast.expr) -> str:
    """The name a receiver goes by: ``metering``, ``self._metering``, ``request.app[METERING]``."""
    if isinstance(node, ast.Subscript):
        return _name(node.slice)
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _calls(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(receiver's name, method, line) of every ``x.method(...)`` call."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            found.append((_name(node.func.value), node.func.attr, node.lineno))
    return found


def test_only_the_gate_routes_admits_and_meters_calls() -> None:
    offenders = []
    for path in sorted(GATEWAY_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        if path.name != "gate.py":
            # The router and the metering service are the gate's: no other module names them in a call.
            offenders += [
                f"{path.name}:{line} {recv}.{meth}()"
                for recv, meth, line in _calls(tree)
                if meth in GATE_ONLY and recv in GATE_ONLY_RECEIVERS
            ]
            if "Router" in names and path.name != "app.py":  # app.py builds the gate's router
                offenders.append(f"{path.name}: uses the hub's Router")
    assert offenders == []


def test_the_gate_does_the_whole_choreography() -> None:
    """The gate itself admits, routes and meters: the test above would pass vacuously otherwise."""
    tree = ast.parse((GATEWAY_DIR / "gate.py").read_text())
    done = {(recv, meth) for recv, meth, _ in _calls(tree)}
    assert {("_metering", "admit"), ("_metering", "record"), ("_router", "call"), ("_router", "open_stream")} <= done
