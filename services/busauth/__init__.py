"""The bus's trust boundary: the auth callout that admits modules with their own credentials.

Platform roles are users of nats.conf; every other connection is decided here
(:class:`BusAuthorizer`), with the permissions of :func:`module_permissions`.
"""

from __future__ import annotations

from .callout import ACCOUNT, BusAuthorizer
from .natsjwt import InvalidClaims, Signer
from .permissions import PLATFORM_TENANT, inbox_prefix, module_permissions

__all__ = [
    "ACCOUNT",
    "PLATFORM_TENANT",
    "BusAuthorizer",
    "InvalidClaims",
    "Signer",
    "inbox_prefix",
    "module_permissions",
]
