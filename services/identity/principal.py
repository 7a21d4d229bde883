"""Who a request speaks for, resolved from an API key or an access token against the index."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from democratic_ai.contracts.toolsets import toolset_allows

from .errors import Unauthenticated
from .hashing import sha256_hex
from .index import IdentityIndex
from .permissions import Role, allows, permissions_of
from .tokens import InvalidToken, KeyRing

__all__ = ["Principal", "authenticate", "expiry_of", "recheck", "sha256_hex"]


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    role: str
    permissions: frozenset[str]
    user_id: str = ""
    key_id: str = ""
    jti: str = ""  # set for access tokens
    session_id: str = ""  # an access token's session (refresh-token family); empty in older tokens
    token_expires_at: datetime | None = None
    rate_limit: int | None = None
    toolset: tuple[str, ...] = ()  # what an API key may call (contracts/toolsets.py); empty, everything

    @property
    def actor(self) -> str:
        return f"user:{self.user_id}" if self.user_id else f"api_key:{self.key_id}"

    @property
    def is_super_admin(self) -> bool:
        return self.role == Role.SUPER_ADMIN

    def can(self, permission: str) -> bool:
        return allows(self.permissions, permission)

    def may_call(self, capability: str) -> bool:
        """Whether the credential's toolset lets it call ``capability`` (the permission aside)."""
        return toolset_allows(self.toolset, capability)


def authenticate(index: IdentityIndex, ring: KeyRing, credential: str) -> Principal:
    """Resolve an API key (``dai_…``) or an access token (a JWT); raises :class:`Unauthenticated`.

    Permissions come from the owner's *current* role (narrowed by a key's scopes), so a role
    change or a deactivation takes effect on the next request, not when a token expires.
    A credential is printable ASCII by construction; anything else (a header that was not
    UTF-8, a pasted curly quote) is refused before it is hashed or parsed.
    """
    if not _printable_ascii(credential):
        raise Unauthenticated("the credential is not valid: it may only hold printable ASCII characters")
    now = datetime.now(UTC)
    if credential.startswith("dai_"):
        key_id = index.api_keys_by_hash.get(sha256_hex(credential))
        if key_id is None:
            raise Unauthenticated("the API key is not valid")
        return _api_key(index, key_id, now)
    try:
        claims = ring.verify(credential)
    except InvalidToken as exc:
        raise Unauthenticated(f"the access token is not valid: {exc}") from None
    return _access_token(
        index, claims.sub, claims.tenant_id, claims.jti, claims.sid, datetime.fromtimestamp(claims.exp, UTC), now
    )


def recheck(index: IdentityIndex, principal: Principal, now: datetime | None = None) -> Principal:
    """What the credential ``principal`` was authenticated from resolves to now; raises
    :class:`Unauthenticated` once it is revoked or expired, its user deactivated, its
    session ended or its tenant suspended.

    For a connection that authenticated once and lives on (the WebSocket): the same rules as
    :func:`authenticate`, from the index alone — a few dict lookups, no hashing or signature
    check. While its permissions hold, the result *is* ``principal``; another object means they
    changed (a role change): the caller decides whether to go on with the new ones.
    """
    now = now or datetime.now(UTC)
    if principal.jti:
        return _access_token(
            index,
            principal.user_id,
            principal.tenant_id,
            principal.jti,
            principal.session_id,
            principal.token_expires_at,
            now,
            principal,
        )
    return _api_key(index, principal.key_id, now, principal)


def _access_token(
    index: IdentityIndex,
    user_id: str,
    tenant_id: str,
    jti: str,
    session_id: str,
    expires_at: datetime | None,
    now: datetime,
    known: Principal | None = None,
) -> Principal:
    if expires_at is None or expires_at <= now:
        raise Unauthenticated("the access token has expired")
    if jti in index.revoked_tokens:
        raise Unauthenticated("the access token has been revoked")
    session = index.sessions.get(session_id) if session_id else None
    # A session this index has not seen yet is one another replica started a moment ago: the
    # token's signature is proof enough. Only an ended session ends its tokens.
    if session is not None and session.revoked:
        raise Unauthenticated("the access token's session has been ended")
    user = index.users.get(user_id)
    if user is None or not user.active or user.tenant_id != tenant_id:
        raise Unauthenticated("the access token's user is not active")
    _tenant_active(index, user.tenant_id)
    if known is not None and known.role == user.role:
        return known  # the same role, the same permissions: spare building a Principal (a re-check's hot path)
    return Principal(
        tenant_id=user.tenant_id,
        role=user.role,
        permissions=permissions_of(user.role),
        user_id=user.user_id,
        jti=jti,
        session_id=session_id,
        token_expires_at=expires_at,
    )


def _printable_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable()


def _api_key(index: IdentityIndex, key_id: str, now: datetime, known: Principal | None = None) -> Principal:
    key = index.api_keys.get(key_id)
    if key is None or key.revoked:
        raise Unauthenticated("the API key is not valid")
    if key.expires_at is not None and key.expires_at <= now:
        raise Unauthenticated("the API key has expired")
    role = key.role
    if key.user_id:
        owner = index.users.get(key.user_id)
        if owner is None or not owner.active:
            raise Unauthenticated("the API key's owner is not active")
        role = owner.role
    _tenant_active(index, key.tenant_id)
    toolset = key.capabilities
    if key.toolset:
        named = index.toolsets.get((key.tenant_id, key.toolset))
        if named is None:  # refused rather than let it call everything
            raise Unauthenticated(f"the API key's toolset {key.toolset!r} no longer exists")
        toolset = named
    if known is not None and known.role == role and known.toolset == toolset:
        return known  # a key's scopes never change: the same role means the same permissions
    granted = permissions_of(role)
    if key.scopes:
        granted = frozenset(s for s in key.scopes if allows(granted, s))
    return Principal(
        tenant_id=key.tenant_id,
        role=role,
        permissions=granted,
        user_id=key.user_id,
        key_id=key.key_id,
        rate_limit=key.rate_limit,
        toolset=toolset,
    )


def _tenant_active(index: IdentityIndex, tenant_id: str) -> None:
    tenant = index.tenants.get(tenant_id)
    if tenant is not None and tenant.suspended:
        raise Unauthenticated(f"tenant {tenant_id!r} is suspended")


def expiry_of(index: IdentityIndex, principal: Principal) -> datetime | None:
    """When ``principal``'s credential expires by itself (``None``: an API key without expiry)."""
    if principal.jti:
        return principal.token_expires_at
    key = index.api_keys.get(principal.key_id)
    return key.expires_at if key is not None else None
