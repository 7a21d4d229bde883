"""Module credentials: ``dai-module.<tenant>.<module_id>.<secret>``.

The tenant and the module id are subject tokens, so the bus-side authorizer learns whose
credential it holds by reading it, and looks up one module instead of hashing against all of
them. The secret is 256 random bits as 43 characters of URL-safe base64 (no ``=``, no ``.``).
The platform keeps only the credential's SHA-256 and a short, non-secret prefix to show.
"""

from __future__ import annotations

import re
import secrets

from democratic_ai.contracts import subjects

from .hashing import sha256_hex

__all__ = [
    "CREDENTIAL_KIND",
    "credential_prefix",
    "credential_sha256",
    "new_module_credential",
    "parse_module_credential",
]

CREDENTIAL_KIND = "dai-module"
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
_SHOWN_SECRET_CHARS = 4  # of the secret, in the prefix: enough to tell two credentials apart
# The longest valid credential: kind, two 64-character tokens, the secret and three dots.
_MAX_LENGTH = len(CREDENTIAL_KIND) + 64 + 64 + 43 + 3


def new_module_credential(tenant: str, module_id: str) -> str:
    """A fresh credential for ``module_id`` of ``tenant``; raises ``InvalidSubjectToken`` for a bad name."""
    subjects.validate_token(tenant, "tenant")
    subjects.validate_token(module_id, "module_id")
    return f"{CREDENTIAL_KIND}.{tenant}.{module_id}.{secrets.token_urlsafe(32)}"


def parse_module_credential(text: str) -> tuple[str, str] | None:
    """``(tenant, module_id)`` of a well-formed credential, or ``None`` for anything else.

    Well-formed says nothing about validity: only comparing its hash with the registered one does.
    """
    if not isinstance(text, str) or len(text) > _MAX_LENGTH:
        return None
    parts = text.split(".")
    if len(parts) != 4 or parts[0] != CREDENTIAL_KIND or not _SECRET.fullmatch(parts[3]):
        return None
    tenant, module_id = parts[1], parts[2]
    try:
        subjects.validate_token(tenant, "tenant")
        subjects.validate_token(module_id, "module_id")
    except subjects.InvalidSubjectToken:
        return None
    return tenant, module_id


def credential_sha256(credential: str) -> str:
    """What the log keeps of a credential (hex SHA-256: the secret has 256 bits, no salt needed)."""
    return sha256_hex(credential)


def credential_prefix(credential: str) -> str:
    """The part of a credential that may be shown again: everything but all of its secret."""
    head, _, secret = credential.rpartition(".")
    return f"{head}.{secret[:_SHOWN_SECRET_CHARS]}"
