"""The database role the gateway connects as: it reads read models and can do nothing else.

``dai_app`` owns no table, is no superuser and cannot bypass Row Level Security, so a query
that forgets its tenant still sees only the tenant its transaction set with ``SET LOCAL``.
Migrations and projections connect as the owner of the tables (the ``DATABASE_URL`` role),
which needs ``BYPASSRLS`` (or superuser) because projections write rows of every tenant.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg

__all__ = ["APP_ROLE", "UnsafeRole", "app_dsn", "check_app_role", "ensure_app_role"]

APP_ROLE = "dai_app"


class UnsafeRole(RuntimeError):
    """The gateway was given a database role that could read across tenants."""


async def ensure_app_role(conn: asyncpg.Connection) -> None:
    """Create ``dai_app`` if it is missing and let it read (only read) this database's tables."""
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", APP_ROLE)
    if not exists:
        try:
            await conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE")
        except asyncpg.DuplicateObjectError:
            pass  # roles are cluster-wide: a migration of another database created it just now
    database = await conn.fetchval("SELECT current_database()")
    await conn.execute(f'GRANT CONNECT ON DATABASE "{database}" TO {APP_ROLE}')
    await conn.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {APP_ROLE}")
    # Quarantined events of every tenant, payloads included: for operators, not for the gateway.
    await conn.execute(f"REVOKE ALL ON projection_dead_letters FROM {APP_ROLE}")


async def check_app_role(conn: asyncpg.Connection) -> None:
    """Refuse a role that is superuser, bypasses RLS, or owns tables (owners can alter policies)."""
    role = await conn.fetchrow("SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
    owned = await conn.fetchval(
        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner"
        " WHERE r.rolname = current_user AND c.relkind IN ('r', 'p')"
    )
    problems = [
        reason
        for reason, present in (
            ("is a superuser", role["rolsuper"]),
            ("can bypass row level security", role["rolbypassrls"]),
            (f"owns {owned} table(s)", owned),
        )
        if present
    ]
    if problems:
        raise UnsafeRole(
            f"refusing to serve: database role {role['rolname']!r} {' and '.join(problems)};"
            f" connect the gateway as {APP_ROLE!r} (DATABASE_APP_URL)"
        )


def app_dsn(owner_dsn: str) -> str:
    """The owner's DSN with ``dai_app`` as the user (for embedded, trust-authenticated servers)."""
    parts = urlsplit(owner_dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{APP_ROLE}@{host}", parts.path, parts.query, parts.fragment))
