"""Module credentials as the platform issues them: ``dai-module.<tenant>.<module_id>.<secret>``.

The platform registers a module for a tenant and hands its author this string once; the module's
connection presents it to the bus, which grants it that module's subjects. The SDK only reads
which tenant owns the module and which module it is for — the secret is never kept. It cannot
borrow the identity service's parser (the SDK does not import ``services``), so the format is read
here too, with the same rules: tenant and module id are subject tokens, the secret 43 characters of
urlsafe base64 (``secrets.token_urlsafe(32)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from democratic_ai.contracts import subjects

from .errors import CredentialError

__all__ = ["ModuleCredential", "parse_module_credential"]

PREFIX = "dai-module"
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class ModuleCredential:
    """Who a module credential speaks for (its secret is not kept)."""

    tenant: str
    module_id: str


def parse_module_credential(text: str) -> ModuleCredential:
    """The tenant and module id that ``text`` names, or :class:`CredentialError`.

    The message never repeats ``text``: it holds a secret, and errors end up in logs.
    """
    parts = text.strip().split(".")
    if len(parts) != 4 or parts[0] != PREFIX:
        raise CredentialError(
            "a module credential has the form 'dai-module.<tenant>.<module_id>.<secret>';"
            f" this one has {len(parts)} dot-separated part(s) or another prefix."
        )
    _, tenant, module_id, secret = parts
    try:
        subjects.validate_token(tenant, "the credential's tenant")
        subjects.validate_token(module_id, "the credential's module_id")
    except subjects.InvalidSubjectToken as exc:
        raise CredentialError(str(exc)) from None
    if not _SECRET.fullmatch(secret):
        raise CredentialError("the credential's secret is not 43 characters of urlsafe base64.")
    return ModuleCredential(tenant=tenant, module_id=module_id)
