"""Identity commands: validate against the index, then append an event with optimistic concurrency.

Nothing here writes a database row. A command checks the current state (the in-memory index),
appends one event with ``Nats-Expected-Last-Subject-Sequence`` on its aggregate's subject, and
waits until its own index has applied it, so the caller's next request sees the change.

Password hashes enter the log sealed with the user's data key (:class:`UserKeyStore`); the
index keeps them sealed, and only the password checks here open them, so authenticating an
API key or a token never touches the key store.
"""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from democratic_ai.contracts import subjects
from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.eventlog import AppendConflict, append
from democratic_ai.contracts.fields import EventRejected
from democratic_ai.contracts.identity_events import (
    AccessTokenRevoked,
    ApiKeyIssued,
    ApiKeyRevoked,
    IdentityEvent,
    LoginAttempted,
    ModuleCredentialRotated,
    ModuleRegistered,
    ModuleRevoked,
    ModuleUpdated,
    PasswordChanged,
    SessionRefreshed,
    SessionRevoked,
    SessionStarted,
    TenantCreated,
    TenantReinstated,
    TenantSuspended,
    TenantUpdated,
    ToolsetDefined,
    ToolsetDeleted,
    UserDeactivated,
    UserRegistered,
    UserRoleChanged,
    encode_event,
)
from democratic_ai.contracts.toolsets import check_toolset, outside_of

from .bootstrap import SYSTEM_TENANT, SYSTEM_TENANT_NAME, new_api_key_secret
from .errors import Conflict, Forbidden, Invalid, NotFound, Throttled, Unauthenticated, Unavailable
from .index import LOGIN_WINDOW, IdentityIndex, ModuleState, TenantState, UserState
from .module_credentials import credential_prefix, credential_sha256, new_module_credential
from .module_rules import check_capabilities, check_module_id, check_name
from .passwords import PASSWORD_HASHER, PasswordRejected, check_policy, hash_password, verify_password
from .permissions import DEFAULT_KEY_SCOPES, Role, allows, permissions_of
from .principal import Principal, sha256_hex
from .sealing import CannotUnseal, is_sealed
from .tokens import KeyRing
from .user_keys import UserKeyStore

__all__ = ["IdentityService", "IssuedKey", "ModuleCredential", "Tokens"]

log = logging.getLogger(__name__)

REFRESH_TOKEN_TTL = timedelta(days=30)
MAX_FAILURES_PER_ACCOUNT = 5
MAX_FAILURES_PER_IP = 20
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
# A fixed hash to verify against when the e-mail is unknown, so both paths cost one argon2 run.
_DUMMY_HASH = PASSWORD_HASHER.hash(secrets.token_urlsafe(16))
_CATCH_UP_SECONDS = 1.0  # how long a login waits for the identity index to fold what others appended


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key_id: str
    secret: str  # the whole key; shown once, never stored by the platform
    event: ApiKeyIssued


@dataclass(frozen=True, slots=True)
class ModuleCredential:
    """A module's new credential: shown to its registrant once, never stored by the platform."""

    module: ModuleState
    credential: str
    prefix: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int


def _email_subject(tenant_id: str, email: str) -> str:
    return subjects.identity_subject(tenant_id, "email", sha256_hex(email)[:32])


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        raise Invalid("the e-mail address is not valid", field="email")
    return email


class IdentityService:
    """The identity commands: tenants, users, sessions, API keys and module credentials.

    A command reads the in-memory index (the IDENTITY stream folded), decides, and appends one
    event on the entity's subject with the expected last sequence of that subject
    (:func:`democratic_ai.contracts.eventlog.append`): two racing commands on one entity cannot
    both win. Secrets never enter an event in clear: passwords are hashed and sealed with the
    user's data key, API keys and module credentials are stored as hashes and shown once.
    The gateway waits for its own index to apply what it appended before it answers.
    """

    def __init__(self, js: JetStreamContext, index: IdentityIndex, ring: KeyRing, user_keys: UserKeyStore) -> None:
        self._js = js
        self.index = index
        self.ring = ring
        self.user_keys = user_keys

    async def _caught_up(self) -> None:
        """Fold what other processes appended up to now (within a second; a bus that does not
        answer leaves the index as it is, and the command decides on that)."""
        try:
            await self.index.catch_up(_CATCH_UP_SECONDS)
        except (NatsError, TimeoutError) as exc:
            log.info("the identity index could not catch up before a login: %r", exc)

    async def _append(self, subject: str, event: IdentityEvent, *, expected: int | None) -> int:
        try:
            data = encode_event(event)
        except EventRejected as exc:
            # The one check of every field against what every reader can hold: nothing is appended.
            raise Invalid(f"{exc.field}: {exc.message}", field=exc.field) from None
        try:
            sequence = await append(self._js, subject, data, expected=expected)
        except AppendConflict:
            raise Conflict("a concurrent change won; read the current state and retry") from None
        await self.index.wait_for(sequence)
        return sequence

    # Tenants ---------------------------------------------------------------------------------

    async def create_tenant(self, meta: Meta, tenant_id: str, name: str) -> TenantCreated:
        _token(tenant_id, "tenant")
        event = TenantCreated(tenant_id=tenant_id, meta=meta, name=name.strip() or tenant_id)
        try:
            await self._append(subjects.identity_subject(tenant_id, "tenant", tenant_id), event, expected=0)
        except Conflict:
            raise Conflict(f"tenant {tenant_id!r} already exists", tenant_id=tenant_id) from None
        return event

    def tenant(self, tenant_id: str) -> TenantState:
        tenant = self.index.tenants.get(tenant_id)
        if tenant is None:
            raise NotFound(f"no tenant {tenant_id!r}")
        return tenant

    async def rename_tenant(self, meta: Meta, tenant_id: str, name: str) -> TenantState:
        """Give the tenant a new name (suspended or not); the same name appends nothing."""
        tenant = self.tenant(tenant_id)
        name = name.strip()
        if not name:
            raise Invalid("name must not be empty", field="name")
        if name != tenant.name:
            await self._tenant_event(TenantUpdated(tenant_id=tenant_id, meta=meta, name=name))
        return self.tenant(tenant_id)

    async def suspend_tenant(self, meta: Meta, tenant_id: str, reason: str = "") -> None:
        """Refuse every credential of the tenant until it is reinstated; 409 if it is suspended already."""
        if self.tenant(tenant_id).suspended:
            raise Conflict(f"tenant {tenant_id!r} is already suspended", suspended=True)
        await self._tenant_event(TenantSuspended(tenant_id=tenant_id, meta=meta, reason=reason))

    async def reinstate_tenant(self, meta: Meta, tenant_id: str, reason: str = "") -> None:
        """Let a suspended tenant's credentials work again; 409 if it is not suspended."""
        if not self.tenant(tenant_id).suspended:
            raise Conflict(f"tenant {tenant_id!r} is not suspended", suspended=False)
        await self._tenant_event(TenantReinstated(tenant_id=tenant_id, meta=meta, reason=reason))

    async def _tenant_event(self, event: IdentityEvent) -> None:
        # On the tenant's own subject, expecting the last event this index saw there: of two
        # concurrent suspensions (or a rename racing one) the second is refused, not doubled.
        subject = subjects.identity_subject(event.tenant_id, "tenant", event.tenant_id)
        await self._append(subject, event, expected=self.index.expected_sequence(subject))

    # Users -----------------------------------------------------------------------------------

    async def register_user(self, meta: Meta, tenant_id: str, email: str, password: str, role: str) -> UserRegistered:
        tenant = self.index.tenants.get(tenant_id)
        if tenant is None or tenant.suspended:
            raise NotFound(f"no active tenant {tenant_id!r}")
        email = normalise_email(email)
        _role(role)
        if role == Role.SUPER_ADMIN:
            raise Forbidden("super admins are not created through the API")
        return await self._register(meta, tenant_id, email, password, role)

    async def register_super_admin(self, meta: Meta, email: str, password: str) -> UserRegistered:
        """Register a super admin in the ``system`` tenant: the operator's command, never the API's.

        Only ``dai identity add-super-admin`` calls this, with the operator's bus credential and
        the KEK; no route does, so a super admin is never made by someone who is not already the
        platform's operator. The ``system`` tenant is recorded first if the log has none yet (a
        platform started without ``dai up``), as ``dai up`` records it.
        """
        tenant = self.index.tenants.get(SYSTEM_TENANT)
        if tenant is None:
            try:
                await self.create_tenant(meta, SYSTEM_TENANT, SYSTEM_TENANT_NAME)
            except Conflict:
                pass  # recorded by someone else since this index read the log: it is there now
        elif tenant.suspended:
            raise Forbidden(f"tenant {SYSTEM_TENANT!r} is suspended: reinstate it first", tenant_id=SYSTEM_TENANT)
        return await self._register(meta, SYSTEM_TENANT, normalise_email(email), password, Role.SUPER_ADMIN)

    async def _register(self, meta: Meta, tenant_id: str, email: str, password: str, role: str) -> UserRegistered:
        """Register ``email`` (normalised) with ``role``, its password checked, hashed and sealed."""
        _policy(password, email)
        user_id = uuid.uuid4().hex
        event = UserRegistered(
            tenant_id=tenant_id,
            meta=meta,
            user_id=user_id,
            email=email,
            role=role,
            password_hash=await self._seal_password(tenant_id, user_id, await hash_password(password)),
        )
        try:
            # The e-mail's own subject can hold one registration, ever: that is the uniqueness rule.
            await self._append(_email_subject(tenant_id, email), event, expected=0)
        except Conflict:
            raise Conflict("a user with this e-mail already exists in the tenant", field="email") from None
        return event

    def user(self, tenant_id: str, user_id: str) -> UserState:
        user = self.index.users.get(user_id)
        if user is None or user.tenant_id != tenant_id:
            raise NotFound(f"no user {user_id!r} in tenant {tenant_id!r}")
        return user

    async def _user_event(self, user: UserState, event: IdentityEvent) -> None:
        subject = subjects.identity_subject(user.tenant_id, "user", user.user_id)
        await self._append(subject, event, expected=self.index.expected_sequence(subject))

    async def change_role(self, meta: Meta, user: UserState, role: str) -> None:
        _role(role)
        if role == Role.SUPER_ADMIN:
            raise Forbidden("super admins are not created through the API")
        if role != user.role:
            await self._user_event(
                user, UserRoleChanged(tenant_id=user.tenant_id, meta=meta, user_id=user.user_id, role=role)
            )

    async def change_password(self, meta: Meta, user: UserState, password: str, *, keep_session: str = "") -> None:
        """Set the user's password and end every session of theirs but ``keep_session`` (the
        one that changed it, if it was the user's own): whoever held the old password may
        have logged in with it. Ending a session refuses its refresh token and its access tokens."""
        _policy(password, user.email)
        sealed = await self._seal_password(user.tenant_id, user.user_id, await hash_password(password))
        await self._user_event(
            user,
            PasswordChanged(
                tenant_id=user.tenant_id,
                meta=meta,
                user_id=user.user_id,
                password_hash=sealed,
            ),
        )
        await self._end_sessions(meta, user, "password_changed", keep=keep_session)

    async def check_password(self, user: UserState, password: str) -> bool:
        """Whether ``password`` is the user's; ``False`` once their key is destroyed."""
        stored = await self._password_hash(user)
        matches, _ = await verify_password(stored or _DUMMY_HASH, password)
        return matches and stored is not None

    async def _password_hash(self, user: UserState) -> str | None:
        """The user's argon2 hash: opened with their data key (``None`` once it is destroyed),
        or as logged in clear by versions before sealing."""
        if not is_sealed(user.sealed_password_hash):
            return user.sealed_password_hash
        try:
            return await self.user_keys.open(user.tenant_id, user.user_id, user.sealed_password_hash)
        except CannotUnseal as exc:
            raise _store_unavailable(user.user_id, exc) from None

    async def _seal_password(self, tenant_id: str, user_id: str, password_hash: str) -> str:
        try:
            return await self.user_keys.seal(tenant_id, user_id, password_hash)
        except CannotUnseal as exc:
            raise _store_unavailable(user_id, exc) from None

    async def deactivate(self, meta: Meta, user: UserState) -> None:
        if not user.active:
            raise Conflict("the user is already deactivated")
        await self._user_event(user, UserDeactivated(tenant_id=user.tenant_id, meta=meta, user_id=user.user_id))
        await self._end_sessions(meta, user, "user_deactivated")

    async def _end_sessions(self, meta: Meta, user: UserState, reason: str, keep: str = "") -> None:
        live = [
            s
            for s in self.index.sessions.values()
            if s.user_id == user.user_id and not s.revoked and s.family_id != keep
        ]
        for session in live:
            await self._revoke_session(meta, session.tenant_id, session.family_id, reason)

    # API keys --------------------------------------------------------------------------------

    async def issue_api_key(
        self,
        meta: Meta,
        *,
        tenant_id: str,
        role: str,
        user_id: str = "",
        name: str = "",
        scopes: Sequence[str] | None = None,
        expires_at: datetime | None = None,
        rate_limit: int | None = None,
        granted: frozenset[str] | None = None,
        capabilities: Sequence[str] | None = None,
        toolset: str = "",
        granted_toolset: tuple[str, ...] = (),
    ) -> IssuedKey:
        """Issue a key whose scopes are a subset of ``granted`` (default: what ``role`` may do) —
        the permissions of whoever asks, so a scoped key cannot issue a wider one.

        Without ``scopes`` the key gets :data:`DEFAULT_KEY_SCOPES` (``module:read``,
        ``module:use``) as far as ``granted`` holds them; never every permission of its owner.
        The limits of every field (``rate_limit`` 1 … 2**31-1, a name without NUL …) are the
        event's types; :meth:`_append` refuses an event outside them with :class:`Invalid`.
        ``capabilities`` is the key's toolset (:mod:`democratic_ai.contracts.toolsets`): what it
        may call, within ``granted_toolset`` (the asker's own); ``None``, the asker's toolset
        (for a user: every capability its permissions allow). ``toolset`` names one of the
        tenant's toolsets instead, which the key follows as it is redefined."""
        _token(tenant_id, "tenant")
        granted = permissions_of(role) if granted is None else granted
        if scopes is None:
            scopes = [s for s in DEFAULT_KEY_SCOPES if allows(granted, s)]
            if not scopes:
                raise Forbidden("you hold neither module:use nor module:read: name the key's scopes", field="scopes")
        elif not scopes:
            # An event with no scopes means "every permission of the owner" (older keys): never that.
            raise Invalid(
                "scopes must name at least one permission (omit it for module:read and module:use)", field="scopes"
            )
        outside = sorted(s for s in scopes if not allows(granted, s))
        if outside:
            raise Forbidden("a key's scopes must be a subset of its owner's permissions", scopes=outside)
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise Invalid("expires_at must be in the future", field="expires_at")
        if toolset and capabilities is not None:
            raise Invalid("name the key's capabilities or a toolset, not both", field="toolset")
        try:
            entries = granted_toolset if capabilities is None else check_toolset(capabilities)
        except ValueError as exc:
            raise Invalid(str(exc), field="capabilities") from None
        if toolset:
            entries = self.toolset(tenant_id, toolset)
        if wider := outside_of(entries, granted_toolset):
            raise Forbidden("a key's toolset must be within its issuer's", capabilities=wider)
        secret = new_api_key_secret()
        key_id = secret.split("_", 2)[1]
        event = ApiKeyIssued(
            tenant_id=tenant_id,
            meta=meta,
            key_id=key_id,
            prefix=secret[:16],
            sha256=sha256_hex(secret),
            role=role,
            user_id=user_id,
            name=name,
            scopes=tuple(sorted(set(scopes))),
            expires_at=expires_at,
            rate_limit=rate_limit,
            capabilities=() if toolset else entries,
            toolset=toolset,
        )
        await self._append(subjects.identity_subject(tenant_id, "api_key", key_id), event, expected=0)
        return IssuedKey(key_id=key_id, secret=secret, event=event)

    # Toolsets --------------------------------------------------------------------------------

    def toolset(self, tenant_id: str, name: str) -> tuple[str, ...]:
        """The capabilities of the tenant's toolset ``name``; :class:`NotFound` if there is none."""
        entries = self.index.toolsets.get((tenant_id, name))
        if entries is None:
            raise NotFound(f"no toolset {name!r}", toolset=name)
        return entries

    async def define_toolset(
        self, meta: Meta, tenant_id: str, name: str, capabilities: Sequence[str]
    ) -> ToolsetDefined:
        """Define the tenant's toolset ``name`` (or replace it: its keys follow at their next call)."""
        _token(tenant_id, "tenant")
        _token(name, "toolset")
        try:
            entries = check_toolset(capabilities)
        except ValueError as exc:
            raise Invalid(str(exc), field="capabilities") from None
        if not entries:
            raise Invalid("a toolset names at least one capability", field="capabilities")
        event = ToolsetDefined(tenant_id=tenant_id, meta=meta, name=name, capabilities=entries)
        await self._append(subjects.identity_subject(tenant_id, "toolset", name), event, expected=None)
        return event

    async def delete_toolset(self, meta: Meta, tenant_id: str, name: str) -> None:
        """Delete the tenant's toolset ``name``; :class:`Conflict` while a live key follows it."""
        self.toolset(tenant_id, name)
        users = sorted(
            k.key_id
            for k in self.index.api_keys.values()
            if k.tenant_id == tenant_id and k.toolset == name and not k.revoked
        )
        if users:
            raise Conflict(f"toolset {name!r} is the toolset of live API keys: revoke them first", api_keys=users)
        await self._append(
            subjects.identity_subject(tenant_id, "toolset", name),
            ToolsetDeleted(tenant_id=tenant_id, meta=meta, name=name),
            expected=None,
        )

    async def revoke_api_key(self, meta: Meta, tenant_id: str, key_id: str) -> None:
        key = self.index.api_keys.get(key_id)
        if key is None or key.tenant_id != tenant_id:
            raise NotFound(f"no API key {key_id!r} in tenant {tenant_id!r}")
        if key.revoked:
            raise Conflict("the API key is already revoked")
        subject = subjects.identity_subject(tenant_id, "api_key", key_id)
        try:
            await self._append(
                subject,
                ApiKeyRevoked(tenant_id=tenant_id, meta=meta, key_id=key_id),
                expected=self.index.expected_sequence(subject),
            )
        except Conflict:
            raise Conflict("the API key is already revoked") from None

    # Modules ---------------------------------------------------------------------------------

    def module(self, tenant_id: str | None, module_id: str) -> ModuleState:
        """The module, if it belongs to ``tenant_id`` (``None``: any tenant); otherwise :class:`NotFound`."""
        module = self.index.modules.get(module_id)
        if module is None or (tenant_id is not None and module.tenant_id != tenant_id):
            raise NotFound(f"no module {module_id!r}", module_id=module_id)
        return module

    async def register_module(
        self,
        meta: Meta,
        *,
        tenant_id: str,
        owner_user_id: str,
        module_id: str,
        name: str = "",
        capabilities: Sequence[str] = (),
    ) -> ModuleCredential:
        """Register ``module_id`` for ``tenant_id`` and return its credential, the only time it is seen.

        Module ids are unique across tenants (a module's direct subjects and presence carry no
        tenant). Within a tenant, the module's subject admits one registration, ever; across
        tenants the index's fold keeps the first registration of an id, so of two racing ones
        the second finds someone else's module once it has been applied, and is refused.
        """
        module_id = check_module_id(module_id)
        name = check_name(name)
        names = check_capabilities(capabilities)
        tenant = self.index.tenants.get(tenant_id)
        if tenant is None or tenant.suspended:
            raise NotFound(f"no active tenant {tenant_id!r}", field="tenant_id")
        taken = Conflict(f"the module id {module_id!r} is taken", field="module_id")
        if module_id in self.index.modules:
            raise taken
        credential = new_module_credential(tenant_id, module_id)
        event = ModuleRegistered(
            tenant_id=tenant_id,
            meta=meta,
            module_id=module_id,
            owner_user_id=owner_user_id,
            name=name,
            capabilities=names,
            credential_sha256=credential_sha256(credential),
            credential_prefix=credential_prefix(credential),
        )
        try:
            await self._append(_module_subject(tenant_id, module_id), event, expected=0)
        except Conflict:
            raise taken from None
        module = self.index.modules.get(module_id)
        if module is None or module.tenant_id != tenant_id or module.credential_sha256 != event.credential_sha256:
            raise taken  # another tenant's registration of the same id came first
        return ModuleCredential(module, credential, event.credential_prefix, meta.at)

    async def update_module(
        self, meta: Meta, module: ModuleState, *, name: str | None = None, capabilities: Sequence[str] | None = None
    ) -> ModuleState:
        """Change a module's name and/or capabilities (``None`` keeps one); a revoked module is final."""
        new_name = None if name is None else check_name(name)
        names = None if capabilities is None else check_capabilities(capabilities)
        if module.revoked:
            raise Conflict(f"module {module.module_id!r} is revoked", module_id=module.module_id)
        if (new_name is None or new_name == module.name) and (names is None or names == module.capabilities):
            return module
        event = ModuleUpdated(
            tenant_id=module.tenant_id, meta=meta, module_id=module.module_id, name=new_name, capabilities=names
        )
        await self._module_event(module, event)
        return self.module(module.tenant_id, module.module_id)

    async def rotate_module_credential(self, meta: Meta, module: ModuleState) -> ModuleCredential:
        """Replace a module's credential: the old one is refused as soon as the event is folded."""
        if module.revoked:
            raise Conflict(f"module {module.module_id!r} is revoked", module_id=module.module_id)
        credential = new_module_credential(module.tenant_id, module.module_id)
        event = ModuleCredentialRotated(
            tenant_id=module.tenant_id,
            meta=meta,
            module_id=module.module_id,
            credential_sha256=credential_sha256(credential),
            credential_prefix=credential_prefix(credential),
        )
        await self._module_event(module, event)
        return ModuleCredential(
            self.module(module.tenant_id, module.module_id), credential, event.credential_prefix, meta.at
        )

    async def revoke_module(self, meta: Meta, module: ModuleState) -> None:
        """Refuse the module's credential from now on; its id stays taken."""
        if module.revoked:
            raise Conflict(f"module {module.module_id!r} is already revoked", module_id=module.module_id)
        await self._module_event(
            module, ModuleRevoked(tenant_id=module.tenant_id, meta=meta, module_id=module.module_id)
        )

    async def _module_event(self, module: ModuleState, event: IdentityEvent) -> None:
        subject = _module_subject(module.tenant_id, module.module_id)
        await self._append(subject, event, expected=self.index.expected_sequence(subject))

    # Sessions --------------------------------------------------------------------------------

    async def login(self, meta: Meta, tenant_id: str, email: str, password: str) -> Tokens:
        """Check the password; a failure says the same whether or not the e-mail exists."""
        email = email.strip().lower()
        email_hash = sha256_hex(email)
        by_account, by_ip = self.index.recent_failures(tenant_id, email_hash, meta.ip, meta.at)
        if by_account >= MAX_FAILURES_PER_ACCOUNT or by_ip >= MAX_FAILURES_PER_IP:
            raise Throttled("too many failed logins; try again later", retry_after=int(LOGIN_WINDOW.total_seconds()))
        await self._caught_up()  # a user (or tenant) recorded a moment ago by another process counts
        user_id = self.index.users_by_email.get((tenant_id, email)) if tenant_id in self.index.tenants else None
        user = self.index.users.get(user_id) if user_id else None
        stored = await self._password_hash(user) if user else None
        matches, needs_rehash = await verify_password(stored or _DUMMY_HASH, password)
        tenant = self.index.tenants.get(tenant_id)
        ok = bool(user and stored and matches and user.active and tenant and not tenant.suspended)
        attempt = LoginAttempted(
            tenant_id=_safe_tenant(tenant_id),
            meta=meta,
            email_sha256=email_hash,
            success=ok,
            user_id=user.user_id if ok and user else "",
        )
        await self._append(
            subjects.identity_subject(_safe_tenant(tenant_id), "login", email_hash[:32]), attempt, expected=None
        )
        if not ok or user is None or stored is None:
            raise Unauthenticated("invalid e-mail, password or tenant")
        if needs_rehash or not is_sealed(user.sealed_password_hash):
            # Weaker parameters get a new hash; a hash logged in clear (before sealing) gets sealed.
            new_hash = await hash_password(password) if needs_rehash else stored
            await self._user_event(
                user,
                PasswordChanged(
                    tenant_id=tenant_id,
                    meta=meta,
                    user_id=user.user_id,
                    password_hash=await self._seal_password(tenant_id, user.user_id, new_hash),
                    rehash=True,
                ),
            )
        family_id = uuid.uuid4().hex
        refresh = _refresh_token(family_id)
        await self._append(
            subjects.identity_subject(tenant_id, "session", family_id),
            SessionStarted(
                tenant_id=tenant_id,
                meta=meta,
                family_id=family_id,
                user_id=user.user_id,
                refresh_sha256=sha256_hex(refresh),
                expires_at=meta.at + REFRESH_TOKEN_TTL,
            ),
            expected=0,
        )
        return self._tokens(user, refresh, family_id)

    async def refresh(self, meta: Meta, refresh_token: str) -> Tokens:
        """Rotate the refresh token; presenting a replaced one ends the session (the whole family
        and the access tokens issued under it). A suspended tenant's sessions are not refreshed."""
        parts = refresh_token.split("_", 2)
        session = self.index.sessions.get(parts[1]) if len(parts) == 3 and parts[0] == "dairt" else None
        if session is None or session.revoked or session.expires_at <= meta.at:
            raise Unauthenticated("the refresh token is not valid")
        if sha256_hex(refresh_token) != session.refresh_sha256:
            # A replaced token came back: it was stolen, or the real one was. End the session.
            await self._revoke_session(meta, session.tenant_id, session.family_id, "reuse_detected")
            raise Unauthenticated("the refresh token was already used; the session has been ended")
        user = self.index.users.get(session.user_id)
        if user is None or not user.active:
            raise Unauthenticated("the refresh token's user is not active")
        tenant = self.index.tenants.get(session.tenant_id)
        if tenant is None or tenant.suspended:
            # Refused, not ended: refusing for as long as the suspension lasts is enough.
            raise Unauthenticated(f"tenant {session.tenant_id!r} is suspended", reason="tenant_suspended")
        refresh = _refresh_token(session.family_id)
        subject = subjects.identity_subject(session.tenant_id, "session", session.family_id)
        try:
            await self._append(
                subject,
                SessionRefreshed(
                    tenant_id=session.tenant_id,
                    meta=meta,
                    family_id=session.family_id,
                    refresh_sha256=sha256_hex(refresh),
                ),
                expected=self.index.expected_sequence(subject),
            )
        except Conflict:
            # Two refreshes with the same token raced: one of them is a replay.
            await self._revoke_session(meta, session.tenant_id, session.family_id, "reuse_detected")
            raise Unauthenticated("the refresh token was already used; the session has been ended") from None
        return self._tokens(user, refresh, session.family_id)

    async def logout(self, meta: Meta, principal: Principal, refresh_token: str | None) -> None:
        if principal.jti and principal.token_expires_at is not None:
            await self._append(
                subjects.identity_subject(principal.tenant_id, "token", principal.jti),
                AccessTokenRevoked(
                    tenant_id=principal.tenant_id, meta=meta, jti=principal.jti, expires_at=principal.token_expires_at
                ),
                expected=None,
            )
        if refresh_token:
            parts = refresh_token.split("_", 2)
            session = self.index.sessions.get(parts[1]) if len(parts) == 3 else None
            if (
                session
                and not session.revoked
                and session.user_id == principal.user_id
                and sha256_hex(refresh_token) == session.refresh_sha256
            ):
                await self._revoke_session(meta, session.tenant_id, session.family_id, "logout")

    async def _revoke_session(self, meta: Meta, tenant_id: str, family_id: str, reason: str) -> None:
        await self._append(
            subjects.identity_subject(tenant_id, "session", family_id),
            SessionRevoked(tenant_id=tenant_id, meta=meta, family_id=family_id, reason=reason),
            expected=None,
        )

    def _tokens(self, user: UserState, refresh: str, family_id: str) -> Tokens:
        # ``sid`` ties the access token to its session: ending the session (logout, reuse of a
        # refresh token, a password change) refuses the access tokens it issued, too.
        access, _, _ = self.ring.issue(
            {
                "sub": user.user_id,
                "tenant_id": user.tenant_id,
                "sid": family_id,
                "role": user.role,
                "permissions": sorted(permissions_of(user.role)),
            }
        )
        return Tokens(access_token=access, refresh_token=refresh, expires_in=15 * 60)


def _module_subject(tenant_id: str, module_id: str) -> str:
    return subjects.identity_subject(tenant_id, "module", module_id)


def _store_unavailable(user_id: str, exc: CannotUnseal) -> Unavailable:
    """Log what only the operator can fix, and tell the client no more than that it is not its fault."""
    log.error(
        "cannot open the data key of user %s: %s Is DAI_KEK_FILE (or DAI_KEK) this platform's key-encryption key?",
        user_id,
        exc,
    )
    return Unavailable(
        "passwords cannot be checked or set now: this gateway cannot open its password store;"
        " the details are in its log"
    )


def _refresh_token(family_id: str) -> str:
    return f"dairt_{family_id}_{secrets.token_urlsafe(32)}"


def _token(value: str, what: str) -> None:
    try:
        subjects.validate_token(value, what)
    except subjects.InvalidSubjectToken as exc:
        raise Invalid(str(exc), field=what) from None


def _safe_tenant(tenant_id: str) -> str:
    """A login for a tenant name that cannot be a subject is recorded under ``unknown``."""
    try:
        return subjects.validate_token(tenant_id, "tenant")
    except subjects.InvalidSubjectToken:
        return "unknown"


def _role(role: str) -> None:
    if role not in {r.value for r in Role}:
        raise Invalid(f"unknown role {role!r}", field="role", allowed=[r.value for r in Role])


def _policy(password: str, email: str) -> None:
    try:
        check_policy(password, email=email)
    except PasswordRejected as exc:
        raise Invalid(str(exc), field="password", rule=exc.rule) from None
