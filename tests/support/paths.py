"""Where the repository and the tests are, for tests that read files or start processes."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
"""The directory that holds the ``support`` package: a process that imports it needs it on ``PYTHONPATH``."""

REPO = TESTS.parent
"""The repository's root (README.md, pyproject.toml, the packages' sources)."""
