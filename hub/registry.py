"""The registry: what every module offers, folded in memory from the REGISTRY stream.

The hub is its only writer (:class:`Registrar`); the gateway and the hub read it through
:class:`RegistryIndex`, which replays the stream on start and then follows it live.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import jsonschema
import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from democratic_ai.contracts import subjects
from democratic_ai.contracts.fields import EventRejected
from democratic_ai.contracts.follower import StreamFollower
from democratic_ai.contracts.headers import NATS_MSG_ID
from democratic_ai.contracts.registry_events import (
    ModuleManifest,
    ModuleRegistered,
    ModuleUpdated,
    decode_event,
    encode_event,
)
from democratic_ai.contracts.streams import REGISTRY_STREAM

__all__ = ["InvalidManifest", "Registrar", "RegistryIndex"]

log = logging.getLogger(__name__)


class RegistryIndex(StreamFollower):
    """Module manifests by module id, kept current from the REGISTRY stream."""

    stream = REGISTRY_STREAM
    filter_subject = subjects.ALL_REGISTRY

    def __init__(self) -> None:
        super().__init__()
        self.manifests: dict[str, ModuleManifest] = {}
        self.digests: dict[str, str] = {}
        self._offered_by: dict[str, set[str]] = {}  # action → module ids
        self._input_limits: dict[tuple[str, str], int] = {}  # (module id, action) → declared max_input_bytes

    def is_registered(self, action: str) -> bool:
        return bool(self._offered_by.get(action))

    def max_input_bytes(self, action: str, module_id: str = "", *, default: int) -> int:
        """The largest input of ``action`` a module takes: ``module_id``'s declaration, or without
        one the largest of the modules offering it (each refuses more than its own declaration);
        ``default`` for a module that declares none, and for an action nobody offers."""
        offering = (module_id,) if module_id else self._offered_by.get(action, ())
        declared = [self._input_limits.get((m, action)) for m in offering]
        return max((d or default for d in declared), default=default)

    def apply_message(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except msgspec.DecodeError:  # ValidationError too: a forged event may not even be JSON
            log.error("skipped an unreadable REGISTRY event on %s", msg.subject)
        else:
            manifest = event.manifest
            previous = self.manifests.get(manifest.module_id)
            for spec in previous.capabilities if previous else ():
                self._offered_by[spec.action].discard(manifest.module_id)
                self._input_limits.pop((manifest.module_id, spec.action), None)
            for spec in manifest.capabilities:
                self._offered_by.setdefault(spec.action, set()).add(manifest.module_id)
                if spec.max_input_bytes is not None:
                    self._input_limits[(manifest.module_id, spec.action)] = spec.max_input_bytes
            self.manifests[manifest.module_id] = manifest
            self.digests[manifest.module_id] = event.digest


class InvalidManifest(ValueError):
    """A module announced a manifest the registry cannot accept."""


class Registrar:
    """Append REGISTRY events for announced manifests: registered, updated, or nothing if unchanged."""

    def __init__(self, js: JetStreamContext, index: RegistryIndex) -> None:
        self._js = js
        self._index = index

    async def announce(self, manifest: ModuleManifest) -> bool:
        """Record ``manifest``; returns whether an event was appended."""
        _validate(manifest)
        digest = manifest.digest()
        module_id = manifest.module_id
        known = self._index.digests.get(module_id)
        if known == digest:
            return False
        now = datetime.now(UTC)
        if known is None:
            event: ModuleRegistered | ModuleUpdated = ModuleRegistered(manifest=manifest, digest=digest, at=now)
            name = "registered"
        else:
            event = ModuleUpdated(manifest=manifest, digest=digest, at=now)
            name = "updated"
        try:
            data = encode_event(event)
        except EventRejected as exc:
            raise InvalidManifest(f"manifest {exc.path}: {exc.message}") from None
        # Two hubs announcing the same manifest at once append it once: same id, same window.
        ack = await self._js.publish(
            subjects.registry(module_id, name), data, headers={NATS_MSG_ID: f"{module_id}:{digest}"}
        )
        await self._index.wait_for(ack.seq)
        return not ack.duplicate


def _holds_nul(value: object) -> bool:
    """Whether a JSON value holds NUL in any string, key or value (iteratively: any depth)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def _validate(manifest: ModuleManifest) -> None:
    try:
        subjects.validate_token(manifest.module_id, "module_id")
        for spec in manifest.capabilities:
            subjects.validate_capability(spec.action)
            for schema in (spec.input_schema, spec.output_schema):
                jsonschema.validators.validator_for(schema).check_schema(schema)
    except subjects.InvalidSubjectToken as exc:
        raise InvalidManifest(str(exc)) from exc
    except jsonschema.SchemaError as exc:
        raise InvalidManifest(f"invalid JSON Schema: {exc.message}") from exc
    for spec in manifest.capabilities:
        # Schemas are stored as jsonb, which refuses the NUL character anywhere (keys included).
        if _holds_nul(spec.input_schema) or _holds_nul(spec.output_schema):
            raise InvalidManifest(f"the schemas of {spec.action!r} hold a NUL character (\\u0000)")
    if not manifest.capabilities:
        raise InvalidManifest(f"module {manifest.module_id!r} offers no capability.")
