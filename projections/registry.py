"""The registry read model: modules and their capabilities with JSON Schemas.

Events of every schema version are folded: :func:`decode_event` upcasts them to the current one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
from nats.aio.msg import Msg

from democratic_ai.contracts.registry_events import ModuleRegistered, RegistryEvent, decode_event
from democratic_ai.contracts.streams import REGISTRY_STREAM
from democratic_ai.contracts.subjects import ALL_REGISTRY

__all__ = ["RegistryProjection"]


class RegistryProjection:
    name = "registry"
    stream = REGISTRY_STREAM
    filter_subject = ALL_REGISTRY
    partitions = None
    tables = ("registry_capabilities", "registry_modules")

    async def apply(self, conn: asyncpg.Connection, events: Sequence[Msg]) -> None:
        # Fold the batch first: only each module's last manifest reaches the database, and only
        # those events' metadata is parsed (it costs more than decoding the event itself).
        latest: dict[str, tuple[RegistryEvent, Msg, datetime | None]] = {}
        for msg in events:
            event = decode_event(msg.data)  # a malformed event raises: the runner quarantines it
            module_id = event.manifest.module_id
            registered_at = event.at if isinstance(event, ModuleRegistered) else None
            if registered_at is None and module_id in latest:
                registered_at = latest[module_id][2]
            latest[module_id] = (event, msg, registered_at)
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
                (
                    e.manifest.module_id,
                    e.manifest.name,
                    e.manifest.version,
                    e.manifest.description,
                    e.digest,
                    registered_at,
                    e.at,
                    msg.metadata.sequence.stream,
                )
                for e, msg, registered_at in latest.values()
            ],
        )
        await conn.execute("DELETE FROM registry_capabilities WHERE module_id = any($1::text[])", list(latest))
        await conn.executemany(
            """
            INSERT INTO registry_capabilities
                (module_id, action, description, input_schema, output_schema, streaming, max_input_bytes)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            """,
            [
                (
                    e.manifest.module_id,
                    c.action,
                    c.description,
                    c.input_schema,
                    c.output_schema,
                    c.streaming,
                    c.max_input_bytes,
                )
                for e, _, _ in latest.values()
                for c in e.manifest.capabilities
            ],
        )
