"""The layers of the README's "Layout": every import of every module points down, never up or sideways.

    contracts, schemas  <  hub  <  sdk, services, projections  <  ops

and inside ``services``: identity, plans  <  billing, metering, busauth  <  gateway.

A package may import from itself and from the layers below it, nothing else. The test reads the
source with ``ast`` — every ``import`` and ``from … import``, at module level, inside functions and
under ``TYPE_CHECKING`` alike — so a late import cannot hide an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support.paths import REPO

ROOT = REPO

# Top-level folders (installed as democratic_ai.<folder>), lowest layer first.
LAYERS: list[tuple[str, ...]] = [("contracts", "schemas"), ("hub",), ("sdk", "services", "projections"), ("ops",)]
# Inside services/, lowest first. ``services`` alone (its __init__) sits below all of them.
SERVICE_LAYERS: list[tuple[str, ...]] = [
    ("services",),
    ("services.identity", "services.plans"),
    ("services.billing", "services.metering", "services.busauth"),
    ("services.gateway",),
]
PACKAGES = [name for layer in LAYERS for name in layer]
_SERVICES = {unit.split(".")[1] for layer in SERVICE_LAYERS for unit in layer if "." in unit}


def _rank(unit: str) -> tuple[int, int]:
    top = unit.split(".")[0]
    outer = next(i for i, layer in enumerate(LAYERS) if top in layer)
    inner = next((i for i, layer in enumerate(SERVICE_LAYERS) if unit in layer), 0)
    return outer, inner


def _unit(parts: list[str]) -> str | None:
    """The layering unit of a dotted name inside the project: ``hub``, ``services.billing``, …"""
    if parts[:1] == ["democratic_ai"]:
        parts = parts[1:]
    if not parts or parts[0] not in PACKAGES:
        return None
    if parts[0] == "services" and len(parts) > 1 and parts[1] in _SERVICES:
        return f"services.{parts[1]}"
    return parts[0]


def allowed(source: str, target: str) -> bool:
    """Whether unit ``source`` may import unit ``target``."""
    if source == target:
        return True
    (s_outer, s_inner), (t_outer, t_inner) = _rank(source), _rank(target)
    if s_outer != t_outer:
        return t_outer < s_outer
    # Same outer layer: only two units of services, one below the other, may meet.
    return source.startswith("services") and target.startswith("services") and t_inner < s_inner


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, list[str]]]:
    """``(line, dotted name)`` of everything ``path`` imports, relative imports resolved."""
    module = list(path.relative_to(root).with_suffix("").parts)
    package = module[:-1]
    found: list[tuple[int, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else list(package)
            else:
                base = []
            base += node.module.split(".") if node.module else []
            # ``from democratic_ai import hub`` / ``from .. import billing``: the names are the packages.
            bare = base in (["democratic_ai"], ["democratic_ai", "services"], ["services"], [])
            found += [(node.lineno, [*base, alias.name]) for alias in node.names] if bare else [(node.lineno, base)]
    return found


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for top in PACKAGES:
        for path in sorted((root / top).rglob("*.py")):
            source = _unit(list(path.relative_to(root).parts))
            assert source is not None
            for line, name in imports(path, root):
                target = _unit(name)
                if target is not None and not allowed(source, target):
                    found.append(f"{path.relative_to(root)}:{line}: {source} imports {target} ({'.'.join(name)})")
    return found


def test_every_import_points_down_the_layers() -> None:
    found = violations()
    assert not found, "imports against the layer order (README, Layout):\n" + "\n".join(found)


def test_every_package_has_a_layer() -> None:
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert on_disk == set(PACKAGES)
    services = {f"services.{p.parent.name}" for p in ROOT.glob("services/*/__init__.py")}
    assert services <= {unit for layer in SERVICE_LAYERS for unit in layer}


@pytest.mark.parametrize(
    ("source", "target", "ok"),
    [
        ("hub", "contracts", True),
        ("sdk", "hub", True),
        ("ops", "services.gateway", True),
        ("contracts", "schemas", False),
        ("hub", "sdk", False),
        ("sdk", "services.identity", False),
        ("projections", "services.metering", False),
        ("services.gateway", "ops", False),
        ("services.metering", "services.plans", True),
        ("services.billing", "services.metering", False),
        ("services.identity", "services.gateway", False),
        ("services.metering", "services.identity", True),
    ],
)
def test_the_rule(source: str, target: str, ok: bool) -> None:
    assert allowed(source, target) is ok


def test_a_late_relative_import_upwards_is_named_with_file_and_line(tmp_path: Path) -> None:
    """The checker sees an import inside a function, relative ones included."""
    for top in PACKAGES:
        (tmp_path / top).mkdir()
        (tmp_path / top / "__init__.py").write_text("")
    (tmp_path / "hub" / "router.py").write_text(
        "from __future__ import annotations\n\nfrom ..contracts import subjects\n\n\n"
        "def route():\n    from ..services.gateway import app\n    return app\n"
    )
    assert sorted(imports(tmp_path / "hub" / "router.py", tmp_path)) == [
        (1, ["__future__"]),
        (3, ["contracts"]),
        (7, ["services", "gateway"]),
    ]
    assert [v.split(" (")[0] for v in violations(tmp_path)] == ["hub/router.py:7: hub imports services.gateway"]
