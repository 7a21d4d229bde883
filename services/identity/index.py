"""The identity state every gateway holds in memory, folded from the IDENTITY stream.

Authentication and authorisation read only this index — never the database — so a call costs
a hash and a few dict lookups. Every gateway replica follows the stream live, which is how a
revocation made through one replica is enforced by all of them within milliseconds.
"""

from __future__ import annotations

import hmac
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import msgspec
from nats.aio.msg import Msg

from democratic_ai.contracts.follower import StreamFollower
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
    decode_event,
)
from democratic_ai.contracts.streams import IDENTITY_STREAM
from democratic_ai.contracts.subjects import ALL_IDENTITY

from .hashing import sha256_hex
from .module_credentials import parse_module_credential

__all__ = [
    "ApiKeyState",
    "ChangeListener",
    "IdentityIndex",
    "ModuleListener",
    "ModuleState",
    "SessionState",
    "TenantState",
    "UserState",
]

log = logging.getLogger(__name__)

LOGIN_WINDOW = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class TenantState:
    tenant_id: str
    name: str
    suspended: bool = False


@dataclass(frozen=True, slots=True)
class UserState:
    user_id: str
    tenant_id: str
    email: str
    role: str
    # As logged: sealed with the user's data key (opened by IdentityService at login), or the
    # argon2 hash in clear in events older than sealing. Never handed to verify_password as is.
    sealed_password_hash: str
    active: bool = True


@dataclass(frozen=True, slots=True)
class ApiKeyState:
    key_id: str
    tenant_id: str
    user_id: str
    role: str
    scopes: tuple[str, ...]
    prefix: str
    name: str
    expires_at: datetime | None
    rate_limit: int | None
    revoked: bool = False
    capabilities: tuple[str, ...] = ()  # its toolset: empty, every capability
    toolset: str = ""  # or the name of its tenant's toolset it follows


@dataclass(frozen=True, slots=True)
class SessionState:
    family_id: str
    tenant_id: str
    user_id: str
    refresh_sha256: str
    expires_at: datetime
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class ModuleState:
    tenant_id: str
    module_id: str
    owner_user_id: str
    name: str
    capabilities: tuple[str, ...]
    credential_sha256: str
    revoked: bool = False


ModuleListener = Callable[[ModuleState], None]
ChangeListener = Callable[[IdentityEvent], None]


class IdentityIndex(StreamFollower):
    stream = IDENTITY_STREAM
    filter_subject = ALL_IDENTITY

    def __init__(self) -> None:
        super().__init__()
        self.tenants: dict[str, TenantState] = {}
        self.users: dict[str, UserState] = {}
        self.users_by_email: dict[tuple[str, str], str] = {}  # (tenant, email) → user id
        self.api_keys: dict[str, ApiKeyState] = {}  # key id → key
        self.api_keys_by_hash: dict[str, str] = {}  # sha256 → key id
        self.toolsets: dict[tuple[str, str], tuple[str, ...]] = {}  # (tenant, name) → its capabilities
        self.sessions: dict[str, SessionState] = {}
        self.revoked_tokens: dict[str, datetime] = {}  # jti → when it expires anyway
        self.failures_by_account: dict[tuple[str, str], deque[datetime]] = {}
        self.failures_by_ip: dict[str, deque[datetime]] = {}
        self.modules: dict[str, ModuleState] = {}  # module id → module (ids are unique across tenants)
        self.subject_sequences: dict[str, int] = {}  # last sequence per subject, for optimistic concurrency
        self._module_listeners: list[ModuleListener] = []
        self._change_listeners: list[ChangeListener] = []

    def expected_sequence(self, subject: str) -> int:
        """The last stream sequence on ``subject`` this index has seen (0: none)."""
        return self.subject_sequences.get(subject, 0)

    def recent_failures(self, tenant_id: str, email_sha256: str, ip: str, now: datetime) -> tuple[int, int]:
        """Failed logins within the window: ``(for this account, from this IP)``."""
        since = now - LOGIN_WINDOW
        account = self.failures_by_account.get((tenant_id, email_sha256), ())
        by_ip = self.failures_by_ip.get(ip, ()) if ip else ()
        return sum(1 for t in account if t > since), sum(1 for t in by_ip if t > since)

    def module_for_credential(self, credential: str) -> ModuleState | None:
        """The module ``credential`` authenticates, or ``None``: malformed, unknown, not the current
        credential (rotated), revoked, or its tenant suspended. The hash is compared in constant time."""
        parsed = parse_module_credential(credential)
        if parsed is None:
            return None
        tenant_id, module_id = parsed
        module = self.modules.get(module_id)
        if module is None or module.tenant_id != tenant_id:
            return None
        if not hmac.compare_digest(sha256_hex(credential), module.credential_sha256):
            return None
        tenant = self.tenants.get(tenant_id)
        if module.revoked or tenant is None or tenant.suspended:
            return None
        return module

    def on_module_change(self, listener: ModuleListener) -> None:
        """Call ``listener`` with a module's new state each time one is registered, updated,
        rotated or revoked — live and during the replay at start. It runs inside the fold: it
        must be quick and must not raise (an exception is logged and otherwise ignored)."""
        self._module_listeners.append(listener)

    def on_change(self, listener: ChangeListener) -> None:
        """Call ``listener`` with every event once it has been folded (the index already shows
        its effect) — live and during the replay at start. It runs inside the fold: it must be
        quick and must not raise (an exception is logged and otherwise ignored)."""
        self._change_listeners.append(listener)

    def remove_change_listener(self, listener: ChangeListener) -> None:
        """Stop calling ``listener`` (if it was added)."""
        if listener in self._change_listeners:
            self._change_listeners.remove(listener)

    def apply_message(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except msgspec.DecodeError:  # ValidationError too: a forged event may not even be JSON
            log.error("skipped an unreadable IDENTITY event on %s", msg.subject)
        else:
            self.apply(event)
        self.subject_sequences[msg.subject] = msg.metadata.sequence.stream

    def apply(self, event: IdentityEvent) -> None:
        self._fold(event)
        for listener in self._change_listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the fold every gateway authenticates from
                log.exception("a change listener failed on %s", type(event).__name__)

    def _fold(self, event: IdentityEvent) -> None:
        match event:
            case TenantCreated():
                self.tenants[event.tenant_id] = TenantState(event.tenant_id, event.name)
            case TenantUpdated():
                if tenant := self.tenants.get(event.tenant_id):
                    self.tenants[event.tenant_id] = replace(tenant, name=event.name)
            case TenantSuspended():
                if tenant := self.tenants.get(event.tenant_id):
                    self.tenants[event.tenant_id] = replace(tenant, suspended=True)
            case TenantReinstated():
                if tenant := self.tenants.get(event.tenant_id):
                    self.tenants[event.tenant_id] = replace(tenant, suspended=False)
            case UserRegistered():
                self.users[event.user_id] = UserState(
                    event.user_id, event.tenant_id, event.email, event.role, event.password_hash
                )
                self.users_by_email[(event.tenant_id, event.email)] = event.user_id
            case UserRoleChanged():
                self._update_user(event.user_id, role=event.role)
            case UserDeactivated():
                self._update_user(event.user_id, active=False)
            case PasswordChanged():
                self._update_user(event.user_id, sealed_password_hash=event.password_hash)
            case ApiKeyIssued():
                self.api_keys[event.key_id] = ApiKeyState(
                    event.key_id,
                    event.tenant_id,
                    event.user_id,
                    event.role,
                    event.scopes,
                    event.prefix,
                    event.name,
                    event.expires_at,
                    event.rate_limit,
                    capabilities=event.capabilities,
                    toolset=event.toolset,
                )
                self.api_keys_by_hash[event.sha256] = event.key_id
            case ToolsetDefined():
                self.toolsets[(event.tenant_id, event.name)] = event.capabilities
            case ToolsetDeleted():
                self.toolsets.pop((event.tenant_id, event.name), None)
            case ApiKeyRevoked():
                if key := self.api_keys.get(event.key_id):
                    self.api_keys[event.key_id] = replace(key, revoked=True)
            case SessionStarted():
                self.sessions[event.family_id] = SessionState(
                    event.family_id, event.tenant_id, event.user_id, event.refresh_sha256, event.expires_at
                )
            case SessionRefreshed():
                if session := self.sessions.get(event.family_id):
                    self.sessions[event.family_id] = replace(session, refresh_sha256=event.refresh_sha256)
            case SessionRevoked():
                if session := self.sessions.get(event.family_id):
                    self.sessions[event.family_id] = replace(session, revoked=True)
            case AccessTokenRevoked():
                self.revoked_tokens[event.jti] = event.expires_at
                if len(self.revoked_tokens) % 1024 == 0:
                    self._forget_expired_revocations(event.meta.at)
            case LoginAttempted():
                if not event.success:
                    self._count_failure(event)
            case ModuleRegistered() | ModuleUpdated() | ModuleCredentialRotated() | ModuleRevoked():
                self._apply_module(event)

    def _apply_module(self, event: ModuleRegistered | ModuleUpdated | ModuleCredentialRotated | ModuleRevoked) -> None:
        """Fold a module event. The first registration of an id wins, platform-wide, and an event
        for another tenant's module is skipped. (The events check their own names: a wildcard
        capability never decodes, so it never reaches the bus permissions built from this.)"""
        current = self.modules.get(event.module_id)
        if isinstance(event, ModuleRegistered):
            if current is not None:
                log.warning("ignored a second registration of module %r (tenant %r)", event.module_id, event.tenant_id)
                return
            module = ModuleState(
                event.tenant_id,
                event.module_id,
                event.owner_user_id,
                event.name,
                event.capabilities,
                event.credential_sha256,
            )
        elif current is None or current.tenant_id != event.tenant_id:
            log.warning(
                "ignored %s for module %r, which tenant %r does not have",
                type(event).__name__,
                event.module_id,
                event.tenant_id,
            )
            return
        elif isinstance(event, ModuleUpdated):
            module = replace(
                current,
                name=current.name if event.name is None else event.name,
                capabilities=current.capabilities if event.capabilities is None else event.capabilities,
            )
        elif isinstance(event, ModuleCredentialRotated):
            module = replace(current, credential_sha256=event.credential_sha256)
        else:
            module = replace(current, revoked=True)
        self.modules[event.module_id] = module
        for listener in self._module_listeners:
            try:
                listener(module)
            except Exception:  # a listener's bug must not stop the fold every gateway authenticates from
                log.exception("a module listener failed on %r", module.module_id)

    def _forget_expired_revocations(self, now: datetime) -> None:
        """A revoked token past its expiry is refused anyway: keeping it would only grow memory."""
        for jti in [jti for jti, expires in self.revoked_tokens.items() if expires <= now]:
            del self.revoked_tokens[jti]

    def _update_user(self, user_id: str, **changes: object) -> None:
        if user := self.users.get(user_id):
            self.users[user_id] = replace(user, **changes)  # type: ignore[arg-type]

    def _count_failure(self, event: LoginAttempted) -> None:
        at = event.meta.at
        for bucket in (
            self.failures_by_account.setdefault((event.tenant_id, event.email_sha256), deque(maxlen=100)),
            self.failures_by_ip.setdefault(event.meta.ip, deque(maxlen=1000)) if event.meta.ip else None,
        ):
            if bucket is not None:
                while bucket and bucket[0] < at - LOGIN_WINDOW:
                    bucket.popleft()
                bucket.append(at)
