"""The platform's first credential: the ``system`` tenant and its super-admin API key.

``dai up`` calls this on every start. Both facts are appended with an expected last subject
sequence of 0, so they enter the log once, ever, however often it runs.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.errors import BadRequestError

from democratic_ai.contracts.streams import WRONG_LAST_SEQUENCE
from democratic_ai.contracts.identity_events import ApiKeyIssued, Meta, TenantCreated, encode_event

from .permissions import Role
from .principal import sha256_hex

__all__ = ["SYSTEM_TENANT", "ensure_bootstrap", "new_api_key_secret"]

SYSTEM_TENANT = "system"


def new_api_key_secret() -> str:
    return f"dai_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


async def _append_once(js: JetStreamContext, subject: str, data: bytes) -> None:
    try:
        await js.publish(subject, data, headers={"Nats-Expected-Last-Subject-Sequence": "0"})
    except BadRequestError as exc:
        if exc.err_code != WRONG_LAST_SEQUENCE:
            raise


async def ensure_bootstrap(js: JetStreamContext, secret: str | None = None) -> str:
    """Record the system tenant and the bootstrap key (``secret``, or a new one); return the key."""
    meta = Meta(at=datetime.now(UTC), actor="system")
    await _append_once(
        js, f"iam.{SYSTEM_TENANT}.tenant.{SYSTEM_TENANT}",
        encode_event(TenantCreated(tenant_id=SYSTEM_TENANT, meta=meta, name="Platform operators")),
    )
    secret = secret or new_api_key_secret()
    key_id = secret.split("_", 2)[1]
    issued = ApiKeyIssued(
        tenant_id=SYSTEM_TENANT, meta=meta, key_id=key_id, prefix=secret[:16], sha256=sha256_hex(secret),
        role=Role.SUPER_ADMIN, name="bootstrap admin",
    )
    await _append_once(js, f"iam.{SYSTEM_TENANT}.api_key.{key_id}", encode_event(issued))
    return secret
