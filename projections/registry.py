"""The registry read model: modules and their capabilities with JSON Schemas."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import asyncpg
import msgspec
from nats.aio.msg import Msg

from democratic_ai.contracts.registry_events import ModuleManifest, ModuleRegistered, decode_event

__all__ = ["RegistryProjection"]

log = logging.getLogger(__name__)


class RegistryProjection:
    name = "registry"
    stream = "REGISTRY"
    filter_subject = "registry.>"
    tables = ("registry_capabilities", "registry_modules")

    async def apply(self, conn: asyncpg.Connection, events: Sequence[Msg]) -> None:
        # Fold the batch first: only each module's last manifest reaches the database.
        latest: dict[str, tuple[ModuleManifest, str, datetime, datetime | None, int]] = {}
        for msg in events:
            try:
                event = decode_event(msg.data)
            except msgspec.ValidationError as exc:
                log.error("skipped REGISTRY event %d: %s", msg.metadata.sequence.stream, exc)
                continue
            module_id = event.manifest.module_id
            registered_at = event.at if isinstance(event, ModuleRegistered) else None
            if module_id in latest and registered_at is None:
                registered_at = latest[module_id][3]
            latest[module_id] = (event.manifest, event.digest, event.at, registered_at, msg.metadata.sequence.stream)
        if not latest:
            return
        await conn.executemany(
            """
            INSERT INTO registry_modules
                (module_id, name, version, description, digest, registered_at, updated_at, last_sequence)
            VALUES ($1, $2, $3, $4, $5, coalesce($6::timestamptz, $7), $7, $8)
            ON CONFLICT (module_id) DO UPDATE SET
                name = excluded.name, version = excluded.version, description = excluded.description,
                digest = excluded.digest, updated_at = excluded.updated_at, last_sequence = excluded.last_sequence,
                registered_at = coalesce($6::timestamptz, registry_modules.registered_at)
            """,
            [
                (m.module_id, m.name, m.version, m.description, digest, registered_at, at, seq)
                for m, digest, at, registered_at, seq in latest.values()
            ],
        )
        await conn.execute("DELETE FROM registry_capabilities WHERE module_id = any($1::text[])", list(latest))
        await conn.executemany(
            """
            INSERT INTO registry_capabilities
                (module_id, action, description, input_schema, output_schema, streaming)
            VALUES ($1, $2, $3, $4, $5, $6)
            """,
            [
                (m.module_id, c.action, c.description, c.input_schema, c.output_schema, c.streaming)
                for m, *_ in latest.values()
                for c in m.capabilities
            ],
        )
