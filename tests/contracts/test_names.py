"""Every subject, stream and header name is spelled once, and spelled as the wire has always had it.

The literals below ARE what is tested: the subjects, stream names and headers the README and the
deployed streams document. The last tests read the product's source: no other module spells one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from democratic_ai.contracts import headers, streams, subjects
from democratic_ai.services.busauth import module_permissions


def test_each_family_is_spelled_as_the_wire_has_it() -> None:
    assert subjects.identity_subject("acme", "user", "u-1") == "iam.acme.user.u-1"
    assert subjects.usage_subject("acme", "api_calls") == "usage.acme.api_calls"
    assert subjects.usage_subject("*", "storage_bytes") == "usage.*.storage_bytes"
    assert subjects.quota_subject("acme", "key-k1") == "ratelimit.acme.key-k1"
    assert subjects.meter_subject("acme") == "ratelimit.acme.meter"
    assert subjects.subscription_subject("acme") == "billing.acme.subscription.acme"
    assert subjects.subscription_subject("*") == "billing.*.subscription.*"
    assert subjects.customer_subject("acme") == "billing.acme.customer.acme"
    assert subjects.invoice_subject("acme", "2025-01") == "billing.acme.invoice.2025-01"
    assert subjects.stripe_event_subject("acme", "ab" * 16) == "billing.acme.stripe_event." + "ab" * 16
    assert subjects.registry("m1", "registered") == "registry.m1.registered"
    assert subjects.event_queue("m1", "on_order") == "m1.on_order"
    assert subjects.records() == "mcp.*.*.>" and subjects.records("acme", "text.echo") == "mcp.*.acme.text.echo"
    assert subjects.of_tenant(subjects.ALL_USAGE, "acme") == "usage.acme.>"
    assert subjects.of_tenant(subjects.ALL_IDENTITY, "acme") == "iam.acme.>"
    with pytest.raises(ValueError, match="tenant"):
        subjects.of_tenant(subjects.ALL_REGISTRY, "acme")
    assert (subjects.ALL_CALLS, subjects.ALL_DIRECT, subjects.ALL_CONTROL) == (
        "mcp.call.>",
        "mcp.direct.>",
        "mcp.ctl.>",
    )


def test_the_streams_capture_what_they_always_did() -> None:
    assert {c.name: c.subjects for c in streams.STREAMS} == {
        "MCP": ["mcp.req.>", "mcp.res.>", "mcp.evt.>"],
        "USAGE": ["usage.>"],
        "RATELIMIT": ["ratelimit.>"],
        "IDENTITY": ["iam.>"],
        "BILLING": ["billing.>"],
        "REGISTRY": ["registry.>"],
    }
    names = (
        streams.MCP_STREAM,
        streams.USAGE_STREAM,
        streams.RATELIMIT_STREAM,
        streams.IDENTITY_STREAM,
        streams.BILLING_STREAM,
        streams.REGISTRY_STREAM,
    )
    assert names == tuple(c.name for c in streams.STREAMS)


def test_headers_are_spelled_as_the_wire_has_them() -> None:
    assert (headers.DAI_STREAM, headers.DAI_WINDOW, headers.DAI_REMAINING_MS) == (
        "Dai-Stream",
        "Dai-Window",
        "Dai-Remaining-Ms",
    )
    assert (headers.NATS_MSG_ID, headers.NATS_EXPECTED_LAST_SUBJECT_SEQUENCE) == (
        "Nats-Msg-Id",
        "Nats-Expected-Last-Subject-Sequence",
    )
    assert (headers.MCP_CONTROL, headers.MCP_ACCEPT_HELD) == ("control", "accept_held")
    assert (headers.MCP_COMPUTE_MS, headers.MCP_BYTES_IN, headers.MCP_BYTES_OUT) == (
        "compute_ms",
        "bytes_in",
        "bytes_out",
    )
    assert (headers.HTTP_API_KEY, headers.HTTP_CALL_ID) == ("X-API-Key", "X-Call-Id")
    values = [getattr(headers, name) for name in headers.__all__]
    assert len(values) == len(set(values)), "one constant per header"


def test_a_module_is_granted_the_subjects_it_always_was() -> None:
    tenant = module_permissions(SimpleNamespace(tenant_id="acme", module_id="m1", capabilities=["text.echo"]))
    assert tenant["sub"]["allow"][:4] == [
        "mcp.call.*.text.echo text.echo",
        "mcp.direct.m1.*.text.echo m1",
        "mcp.ctl.m1.*",
        "mcp.evt.acme.>",
    ]
    assert tenant["pub"]["allow"] == [
        "mcp.res.*.text.echo",
        "hub.announce.m1",
        "hub.heartbeat.m1",
        "hub.leave.m1",
        "_INBOX.>",
        "mcp.call.>",
        "mcp.direct.>",
        "mcp.req.>",
        "mcp.ctl.>",
        "mcp.evt.acme.>",
    ]
    assert tenant["pub"]["deny"][:5] == ["iam.>", "usage.>", "billing.>", "ratelimit.>", "registry.>"]
    assert tenant["sub"]["deny"][:7] == [
        "mcp.req.>",
        "mcp.res.>",
        "iam.>",
        "usage.>",
        "billing.>",
        "ratelimit.>",
        "registry.>",
    ]
    platform = module_permissions(SimpleNamespace(tenant_id="system", module_id="m2", capabilities=["a.b"]))
    assert "mcp.evt.*.>" in platform["sub"]["allow"] and "mcp.evt.*.>" in platform["pub"]["allow"]


# Where a name may still be spelled: its own module, and what is not a name of ours.
_PRODUCT = ("contracts", "hub", "sdk", "services", "projections", "ops", "schemas")
_SUBJECT = re.compile(r"(iam|usage|billing|mcp|registry|ratelimit|hub)\.([a-z0-9_*>-]|$)")
_HEADER = re.compile(r"(Nats-|Dai-)[A-Za-z-]+|X-API-Key|X-Call-Id")
_STREAM_NAMES = {"MCP", "USAGE", "RATELIMIT", "IDENTITY", "BILLING", "REGISTRY"}
_EVENT_TAGS = {"usage.call", "usage.storage"}  # msgspec tags of USAGE events, not subjects


def _strings(path: Path) -> list[tuple[int, str]]:
    """Every string constant of a module (f-strings by their leading text), docstrings and ``__all__`` left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    exports = {
        id(element)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
        for element in ast.walk(node.value)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            head = node.values[0] if node.values else None
            if isinstance(head, ast.Constant) and isinstance(head.value, str):
                found.append((node.lineno, head.value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings | exports:
            found.append((node.lineno, node.value))
    return sorted(set(found))


def _spelled(repo_root: Path) -> list[str]:
    spelled = []
    for top in _PRODUCT:
        for path in sorted((repo_root / top).rglob("*.py")):
            rel = path.relative_to(repo_root).as_posix()
            if rel.endswith("_pb2.py") or "/examples/" in rel:
                continue
            for line, value in _strings(path):
                where = f"{rel}:{line}: {value!r}"
                if _SUBJECT.match(value) and value not in _EVENT_TAGS and rel != "contracts/subjects.py":
                    spelled.append(where)
                elif value in _STREAM_NAMES and rel != "contracts/streams.py":
                    spelled.append(where)
                elif _HEADER.fullmatch(value) and rel != "contracts/headers.py":
                    spelled.append(where)
    return spelled


def test_no_module_spells_a_subject_stream_or_header_of_its_own(repo_root: Path) -> None:
    assert _spelled(repo_root) == []
