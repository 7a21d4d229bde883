"""Names no other test uses: tests share the servers and their streams, never their data."""

from __future__ import annotations

import uuid


def unique(prefix: str) -> str:
    """A subject-safe name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
