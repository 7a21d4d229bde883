"""The one digest the identity log keeps of a high-entropy secret (API keys, refresh tokens, module credentials)."""

from __future__ import annotations

import hashlib

__all__ = ["sha256_hex"]


def sha256_hex(secret: str) -> str:
    """Hex SHA-256 of ``secret``: enough for 256-bit random secrets, which need no salt or slow hash."""
    return hashlib.sha256(secret.encode()).hexdigest()
