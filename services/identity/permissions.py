"""Roles and their permissions: the product's table, plus two additions.

The first: ``tenant_admin`` also holds ``billing:update`` — choosing its tenant's plan and
adding a card through Stripe Checkout — because a tenant upgrading itself is the normal way a
plan changes; the seed's table gave it ``billing:read`` only, which would leave every plan
change to a super admin. Closing a month into invoices (``billing:close``) stays with super
admins (``*``).

The second: ``developer`` also holds ``module:use``, so a developer can call capabilities — the
module they just wrote among them; the seed's table let them register modules but not try them.

An API key created without ``scopes`` gets :data:`DEFAULT_KEY_SCOPES` (calling and listing
capabilities), as far as its owner holds them — not every permission of its owner.

A permission is ``resource:action`` with an optional scope: ``:own`` (things the caller owns,
e.g. its API keys) or ``:self`` (the caller's own user). ``*`` grants everything and
``resource:*`` every action on a resource (scoped ones included).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

__all__ = ["DEFAULT_KEY_SCOPES", "ROLE_PERMISSIONS", "Role", "allows", "permissions_of"]


class Role(StrEnum):
    SUPER_ADMIN = "super_admin"
    TENANT_ADMIN = "tenant_admin"
    DEVELOPER = "developer"
    USER = "user"
    VIEWER = "viewer"


ROLE_PERMISSIONS: dict[Role, frozenset[str]] = {
    Role.SUPER_ADMIN: frozenset({"*"}),
    Role.TENANT_ADMIN: frozenset(
        {
            "tenant:read",
            "tenant:update",
            "user:create",
            "user:read",
            "user:update",
            "user:delete",
            "module:*",
            "api_key:*",
            "billing:read",
            "billing:update",
        }
    ),
    Role.DEVELOPER: frozenset(
        {
            "tenant:read",
            "user:read:self",
            "user:update:self",
            "module:create",
            "module:read",
            "module:update",
            "module:delete:own",
            "module:use",  # not in the product's table: a developer can call what they build
            "api_key:create:own",
            "api_key:read:own",
            "api_key:delete:own",
        }
    ),
    Role.USER: frozenset(
        {
            "tenant:read",
            "user:read:self",
            "user:update:self",
            "module:read",
            "module:use",
            "api_key:read:own",
        }
    ),
    Role.VIEWER: frozenset(
        {
            "tenant:read",
            "user:read:self",
            "module:read",
        }
    ),
}

# What an API key created without ``scopes`` may do (within its owner's permissions).
DEFAULT_KEY_SCOPES: tuple[str, ...] = ("module:read", "module:use")


# By the role's name: a StrEnum member hashes by its *name*, so ROLE_PERMISSIONS cannot be
# looked up with a plain string, and ``Role(role)`` costs a microsecond on every request.
_BY_NAME: dict[str, frozenset[str]] = {role.value: granted for role, granted in ROLE_PERMISSIONS.items()}
_NONE: frozenset[str] = frozenset()


def permissions_of(role: str) -> frozenset[str]:
    """The permissions of ``role`` (none for an unknown role)."""
    return _BY_NAME.get(role, _NONE)


def allows(granted: Iterable[str], needed: str) -> bool:
    """Whether ``granted`` covers ``needed`` (e.g. ``"user:read"`` or ``"api_key:read:own"``)."""
    resource = needed.split(":", 1)[0]
    return any(permission in (needed, "*", f"{resource}:*") for permission in granted)
