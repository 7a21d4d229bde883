"""Identity: API keys as IDENTITY events, and the in-memory index the gateway authenticates with."""

from __future__ import annotations

from .api_keys import ApiKeyIndex, IssuedKey, Principal, issue_api_key

__all__ = ["ApiKeyIndex", "IssuedKey", "Principal", "issue_api_key"]
