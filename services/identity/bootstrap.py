"""The platform's first credential: the ``system`` tenant and its super-admin API key.

``dai up`` calls this on every start. Both facts are appended with an expected last subject
sequence of 0, so they enter the log once, ever, however often it runs.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from nats.js import JetStreamContext

from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.eventlog import AppendConflict, append
from democratic_ai.contracts.identity_events import (
    ApiKeyIssued,
    ModuleCredentialRotated,
    ModuleRegistered,
    ModuleUpdated,
    TenantCreated,
    encode_event,
)
from democratic_ai.contracts.subjects import identity_subject

from .index import IdentityIndex
from .module_credentials import credential_prefix, credential_sha256, new_module_credential
from .permissions import Role
from .principal import sha256_hex

__all__ = ["SYSTEM_TENANT", "SYSTEM_TENANT_NAME", "ensure_bootstrap", "ensure_platform_module", "new_api_key_secret"]

SYSTEM_TENANT = "system"
SYSTEM_TENANT_NAME = "Platform operators"


def new_api_key_secret() -> str:
    return f"dai_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


async def _append_once(js: JetStreamContext, subject: str, data: bytes) -> None:
    """Append the first event of ``subject``; one already there (an earlier start's) is kept."""
    try:
        await append(js, subject, data, expected=0)
    except AppendConflict:
        pass


async def ensure_bootstrap(js: JetStreamContext, secret: str | None = None) -> str:
    """Record the system tenant and the bootstrap key (``secret``, or a new one); return the key."""
    meta = Meta(at=datetime.now(UTC), actor="system")
    await _append_once(
        js,
        identity_subject(SYSTEM_TENANT, "tenant", SYSTEM_TENANT),
        encode_event(TenantCreated(tenant_id=SYSTEM_TENANT, meta=meta, name=SYSTEM_TENANT_NAME)),
    )
    secret = secret or new_api_key_secret()
    key_id = secret.split("_", 2)[1]
    issued = ApiKeyIssued(
        tenant_id=SYSTEM_TENANT,
        meta=meta,
        key_id=key_id,
        prefix=secret[:16],
        sha256=sha256_hex(secret),
        role=Role.SUPER_ADMIN,
        name="bootstrap admin",
    )
    await _append_once(js, identity_subject(SYSTEM_TENANT, "api_key", key_id), encode_event(issued))
    return secret


async def ensure_platform_module(
    js: JetStreamContext, module_id: str, name: str, capabilities: tuple[str, ...], credential: str | None
) -> str | None:
    """Make ``credential`` (or a new one) the live credential of the platform module ``module_id``.

    ``dai up`` runs the example modules as modules of the ``system`` tenant, each with a credential
    of its own like any other module. The stored credential is kept while the log accepts it; a
    module never registered is registered, one whose credential the log no longer accepts (a reset
    data dir, a rotation through the API) gets a new one, and changed capabilities are recorded.
    Returns the credential to run it with, or None for a module an operator revoked.
    """
    index = IdentityIndex()
    await index.start(js)
    try:
        module = index.modules.get(module_id)
        if module is not None and module.revoked:
            return None
        subject = identity_subject(SYSTEM_TENANT, "module", module_id)
        meta = Meta(at=datetime.now(UTC), actor="system")
        if module is not None and module.tenant_id != SYSTEM_TENANT:
            raise ValueError(f"module id {module_id!r} is taken by tenant {module.tenant_id!r}.")
        if credential is None or index.module_for_credential(credential) is None:
            credential = new_module_credential(SYSTEM_TENANT, module_id)
            fields = {
                "tenant_id": SYSTEM_TENANT,
                "meta": meta,
                "module_id": module_id,
                "credential_sha256": credential_sha256(credential),
                "credential_prefix": credential_prefix(credential),
            }
            event = (
                ModuleRegistered(**fields, owner_user_id="", name=name, capabilities=capabilities)
                if module is None
                else ModuleCredentialRotated(**fields)
            )
            await append(js, subject, encode_event(event), expected=index.expected_sequence(subject))
        elif tuple(module.capabilities) != capabilities:
            updated = ModuleUpdated(tenant_id=SYSTEM_TENANT, meta=meta, module_id=module_id, capabilities=capabilities)
            await append(js, subject, encode_event(updated), expected=index.expected_sequence(subject))
        return credential
    finally:
        await index.stop()
