"""The linters CI runs, as tests: ``ruff check``, ``ruff format --check`` and mypy, strict on
``contracts/`` and ``sdk/``. Their configuration is in pyproject.toml; a failure shows their output.

mypy finds a package by its folders, and the installed names (``democratic_ai.contracts`` for
``contracts/``, …) exist only in setuptools' import hook, which mypy does not run. So the test
builds the package as mypy must see it, out of symlinks, under ``.mypy_cache/packages`` (next to
mypy's cache, which makes a second run take a second or two), and checks it there:

    MYPYPATH=.mypy_cache/packages mypy -p democratic_ai.contracts -p democratic_ai.sdk
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = next(parent for parent in Path(__file__).resolve().parents if (parent / "pyproject.toml").is_file())
# Every folder installed as democratic_ai.<folder> (pyproject.toml's package-dir).
PACKAGES = ("contracts", "hub", "ops", "projections", "schemas", "sdk", "services")
STRICT = ("democratic_ai.contracts", "democratic_ai.sdk")
TIMEOUT = 600


def _run(*args: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}", pytrace=False)


def _package_tree(cache: Path) -> Path:
    """``<cache>/packages/democratic_ai/<folder>``, a symlink to each folder of the repo."""
    tree = cache / "packages"
    package = tree / "democratic_ai"
    package.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        link = package / name
        if link.is_symlink() and link.resolve() == ROOT / name:
            continue
        if link.is_symlink():
            link.unlink()
        link.symlink_to(ROOT / name, target_is_directory=True)
    return tree


def test_ruff_check() -> None:
    _run("ruff", "check", "--no-cache", ".")


def test_ruff_format() -> None:
    _run("ruff", "format", "--check", "--no-cache", ".")


def test_mypy_strict_on_contracts_and_sdk() -> None:
    cache = ROOT / ".mypy_cache"
    env = {**os.environ, "MYPYPATH": str(_package_tree(cache))}
    _run("mypy", "--cache-dir", str(cache), *(arg for name in STRICT for arg in ("-p", name)), env=env)
