"""API keys: issued as events, authenticated from memory.

A key reads ``dai_<key id>_<secret>``. The gateway keeps ``sha256(key) → principal`` in memory,
fed by the IDENTITY stream, so authenticating a call costs one hash and one dict lookup.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import BadRequestError

from democratic_ai.contracts import subjects
from democratic_ai.contracts.identity_events import ApiKeyIssued, decode_event, encode_event

__all__ = ["ApiKeyIndex", "IssuedKey", "Principal", "issue_api_key"]

log = logging.getLogger(__name__)

WRONG_LAST_SEQUENCE = 10071  # JetStream: Nats-Expected-Last-Subject-Sequence did not match


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a credential speaks for."""

    tenant_id: str
    key_id: str
    role: str


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key_id: str
    secret: str  # the whole key; shown once, never stored by the platform


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def issue_api_key(js: JetStreamContext, *, tenant_id: str, role: str, name: str = "", key: str | None = None) -> IssuedKey:
    """Append ``api_key.issued``; with ``key`` given, (re)record that exact key idempotently."""
    subjects.validate_token(tenant_id, "tenant")
    if key is None:
        key = f"dai_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    key_id = key.split("_")[1] if key.count("_") >= 2 else _digest(key)[:12]
    event = ApiKeyIssued(
        key_id=key_id, tenant_id=tenant_id, prefix=key[:12], sha256=_digest(key), role=role, name=name,
        at=datetime.now(UTC),
    )
    try:
        # Expected last sequence 0 on the key's own subject: a key is issued once, ever.
        await js.publish(
            f"iam.{tenant_id}.api_key.{key_id}",
            encode_event(event),
            headers={"Nats-Expected-Last-Subject-Sequence": "0"},
        )
    except BadRequestError as exc:
        if exc.err_code != WRONG_LAST_SEQUENCE:
            raise
        log.info("API key %s was already issued", key_id)
    return IssuedKey(key_id=key_id, secret=key)


class ApiKeyIndex:
    """``sha256(key) → Principal`` for every key in the IDENTITY stream, followed live."""

    def __init__(self) -> None:
        self._principals: dict[str, Principal] = {}
        self._caught_up = asyncio.Event()
        self._target = 0
        self._subscription: JetStreamContext.PushSubscription | None = None

    async def start(self, js: JetStreamContext, timeout: float = 10.0) -> None:
        self._target = (await js.stream_info("IDENTITY")).state.last_seq
        if self._target == 0:
            self._caught_up.set()
        self._subscription = await js.subscribe(
            "iam.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL, cb=self._on_event
        )
        await asyncio.wait_for(self._caught_up.wait(), timeout)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    def authenticate(self, key: str) -> Principal | None:
        return self._principals.get(_digest(key))

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except msgspec.ValidationError:
            log.error("skipped an unreadable IDENTITY event on %s", msg.subject)
        else:
            self._principals[event.sha256] = Principal(tenant_id=event.tenant_id, key_id=event.key_id, role=event.role)
        if msg.metadata.sequence.stream >= self._target:
            self._caught_up.set()
