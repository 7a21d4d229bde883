"""Identity read models: tenants, users, API keys, modules, revoked tokens and the audit log.

Each batch is folded in memory first and written with one statement per table, so a batch of
thousands of events costs a handful of round trips. The audit log gets one row per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from nats.aio.msg import Msg

from democratic_ai.contracts.identity_events import (
    AccessTokenRevoked,
    ApiKeyIssued,
    ApiKeyRevoked,
    LoginAttempted,
    ModuleCredentialRotated,
    ModuleRegistered,
    ModuleRevoked,
    ModuleUpdated,
    PasswordChanged,
    TenantCreated,
    TenantReinstated,
    TenantSuspended,
    TenantUpdated,
    UserDeactivated,
    UserRegistered,
    UserRoleChanged,
    decode_event,
)
from democratic_ai.contracts.streams import IDENTITY_STREAM
from democratic_ai.contracts.subjects import ALL_IDENTITY

__all__ = ["IdentityProjection"]

_CREATED = "__created__"  # marks a folded row whose creation event is in the batch


class IdentityProjection:
    name = "identity"
    stream = IDENTITY_STREAM
    filter_subject = ALL_IDENTITY
    partitions = None
    tables = ("identity_audit", "revoked_tokens", "modules", "api_keys", "users", "tenants")

    async def apply(self, conn: asyncpg.Connection, events: Sequence[Msg]) -> None:
        tenants: dict[str, dict[str, Any]] = {}
        users: dict[str, dict[str, Any]] = {}
        keys: dict[str, dict[str, Any]] = {}
        modules: dict[tuple[str, str], dict[str, Any]] = {}  # (tenant, module id): a losing registration stays apart
        revoked: list[tuple[Any, ...]] = []
        audit: list[tuple[Any, ...]] = []
        for msg in events:
            event = decode_event(msg.data)  # a malformed event raises: the runner quarantines it
            at = event.meta.at
            success = event.success if isinstance(event, LoginAttempted) else True
            audit.append(
                (
                    msg.metadata.sequence.stream,
                    event.tenant_id,
                    type(event).__struct_config__.tag,
                    msg.subject,
                    event.meta.actor,
                    event.meta.ip,
                    event.meta.user_agent,
                    success,
                    at,
                )
            )
            match event:
                case TenantCreated():
                    tenants[event.tenant_id] = {
                        _CREATED: True,
                        "name": event.name,
                        "suspended": False,
                        "created_at": at,
                        "updated_at": at,
                    }
                case TenantUpdated():
                    tenants.setdefault(event.tenant_id, {}).update(name=event.name, updated_at=at)
                case TenantSuspended():
                    tenants.setdefault(event.tenant_id, {}).update(suspended=True, updated_at=at)
                case TenantReinstated():
                    tenants.setdefault(event.tenant_id, {}).update(suspended=False, updated_at=at)
                case UserRegistered():
                    users[event.user_id] = {
                        _CREATED: True,
                        "tenant_id": event.tenant_id,
                        "email": event.email,
                        "role": event.role,
                        "active": True,
                        "created_at": at,
                        "updated_at": at,
                    }
                case UserRoleChanged():
                    users.setdefault(event.user_id, {}).update(role=event.role, updated_at=at)
                case UserDeactivated():
                    users.setdefault(event.user_id, {}).update(active=False, updated_at=at)
                case PasswordChanged():
                    users.setdefault(event.user_id, {}).update(updated_at=at)
                case ApiKeyIssued():
                    keys[event.key_id] = {
                        _CREATED: True,
                        "tenant_id": event.tenant_id,
                        "user_id": event.user_id,
                        "name": event.name,
                        "prefix": event.prefix,
                        "role": event.role,
                        "scopes": list(event.scopes),
                        "expires_at": event.expires_at,
                        "rate_limit": event.rate_limit,
                        "capabilities": list(event.capabilities),
                        "toolset": event.toolset,
                        "created_at": at,
                        "revoked_at": None,
                    }
                case ApiKeyRevoked():
                    keys.setdefault(event.key_id, {}).update(revoked_at=at)
                case AccessTokenRevoked():
                    revoked.append((event.tenant_id, event.jti, event.expires_at, at))
                case ModuleRegistered():
                    modules.setdefault(
                        (event.tenant_id, event.module_id),
                        {
                            _CREATED: True,
                            "owner_user_id": event.owner_user_id,
                            "name": event.name,
                            "capabilities": list(event.capabilities),
                            "credential_prefix": event.credential_prefix,
                            "registered_at": at,
                            "updated_at": at,
                            "revoked_at": None,
                        },
                    )
                case ModuleUpdated():
                    row = modules.setdefault((event.tenant_id, event.module_id), {})
                    if event.name is not None:
                        row["name"] = event.name
                    if event.capabilities is not None:
                        row["capabilities"] = list(event.capabilities)
                    row["updated_at"] = at
                case ModuleCredentialRotated():
                    modules.setdefault((event.tenant_id, event.module_id), {}).update(
                        credential_prefix=event.credential_prefix, updated_at=at
                    )
                case ModuleRevoked():
                    modules.setdefault((event.tenant_id, event.module_id), {}).update(revoked_at=at, updated_at=at)
        await _upsert(conn, "tenants", "tenant_id", tenants)
        await _upsert(conn, "users", "user_id", users)
        await _upsert(conn, "api_keys", "key_id", keys)
        await _write_modules(conn, modules)
        if revoked:
            await conn.executemany(
                "INSERT INTO revoked_tokens (tenant_id, jti, expires_at, revoked_at) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (jti) DO NOTHING",
                revoked,
            )
        if audit:
            await conn.executemany(
                "INSERT INTO identity_audit"
                " (sequence, tenant_id, event_type, subject, actor, ip, user_agent, success, at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (sequence) DO NOTHING",
                audit,
            )


async def _upsert(conn: asyncpg.Connection, table: str, key: str, rows: dict[str, dict[str, Any]]) -> None:
    """Write folded rows: a row created in this batch is inserted whole (or replaces the row a
    rebuild already wrote); a row only changed in this batch gets an UPDATE of what changed.

    Rows are grouped by the columns they carry: one ``executemany`` per group.
    """
    groups: dict[tuple[bool, tuple[str, ...]], list[tuple[Any, ...]]] = {}
    for row_key, values in rows.items():
        columns = tuple(sorted(c for c in values if c != _CREATED))
        groups.setdefault((_CREATED in values, columns), []).append((row_key, *(values[c] for c in columns)))
    for (created, columns), records in groups.items():
        names = (key, *columns)
        if created:
            placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 1))
            updates = ", ".join(f"{c} = excluded.{c}" for c in columns)
            sql = (
                f"INSERT INTO {table} ({', '.join(names)}) VALUES ({placeholders})"
                f" ON CONFLICT ({key}) DO UPDATE SET {updates}"
            )
        else:
            sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=2))
            sql = f"UPDATE {table} SET {sets} WHERE {key} = $1"
        await conn.executemany(sql, records)


async def _write_modules(conn: asyncpg.Connection, rows: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Write folded module rows; the first registration of a module id wins, as in the index.

    Another tenant's later registration of a taken id (two tenants racing) is in the log but
    changes nothing: the insert leaves a row of another tenant alone, and every update names
    the tenant. Rows created in the batch carry every column, so they are inserted in log order.
    """
    groups: dict[tuple[bool, tuple[str, ...]], list[tuple[Any, ...]]] = {}
    for (tenant_id, module_id), values in rows.items():
        columns = tuple(sorted(c for c in values if c != _CREATED))
        groups.setdefault((_CREATED in values, columns), []).append(
            (module_id, tenant_id, *(values[c] for c in columns))
        )
    for (created, columns), records in groups.items():
        if not created:
            sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=3))
            await conn.executemany(f"UPDATE modules SET {sets} WHERE module_id = $1 AND tenant_id = $2", records)
            continue
        names = ("module_id", "tenant_id", *columns)
        placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 1))
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns)
        await conn.executemany(
            f"INSERT INTO modules ({', '.join(names)}) VALUES ({placeholders}) ON CONFLICT (module_id)"
            f" DO UPDATE SET {updates} WHERE modules.tenant_id = excluded.tenant_id",
            records,
        )
