"""The re-check of a live connection's credential, on an index fed by hand (no servers):
``recheck`` follows every change :func:`authenticate` would, and the watch ends exactly the
connections a change concerns, once, at once — or when the credential expires."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.identity_events import (
    ApiKeyIssued,
    ApiKeyRevoked,
    LoginAttempted,
    SessionRevoked,
    SessionStarted,
    TenantCreated,
    TenantSuspended,
    UserDeactivated,
    UserRegistered,
    UserRoleChanged,
)
from democratic_ai.services.gateway.credential_watch import CredentialWatch
from democratic_ai.services.identity import IdentityIndex, Principal, Unauthenticated, permissions_of, recheck

NOW = datetime.now(UTC)
META = Meta(at=NOW)


def _index() -> IdentityIndex:
    index = IdentityIndex()
    for tenant in ("acme", "other"):
        index.apply(TenantCreated(tenant_id=tenant, meta=META, name=tenant))
    index.apply(
        UserRegistered(
            tenant_id="acme",
            meta=META,
            user_id="u1",
            email="a@example.com",
            role="tenant_admin",
            password_hash="sealed",
        )
    )
    index.apply(
        ApiKeyIssued(
            tenant_id="acme",
            meta=META,
            key_id="k1",
            prefix="dai_k1",
            sha256="0" * 64,
            role="tenant_admin",
            user_id="u1",
        )
    )
    index.apply(
        SessionStarted(
            tenant_id="acme",
            meta=META,
            family_id="s1",
            user_id="u1",
            refresh_sha256="1" * 64,
            expires_at=NOW + timedelta(days=1),
        )
    )
    return index


def _key() -> Principal:
    return Principal(
        tenant_id="acme", role="tenant_admin", permissions=permissions_of("tenant_admin"), user_id="u1", key_id="k1"
    )


def _token(expires_in: float = 900, session_id: str = "s1") -> Principal:
    return Principal(
        tenant_id="acme",
        role="tenant_admin",
        permissions=permissions_of("tenant_admin"),
        user_id="u1",
        jti="j1",
        session_id=session_id,
        token_expires_at=NOW + timedelta(seconds=expires_in),
    )


@pytest.mark.parametrize(
    "event",
    [
        ApiKeyRevoked(tenant_id="acme", meta=META, key_id="k1"),
        UserDeactivated(tenant_id="acme", meta=META, user_id="u1"),
        TenantSuspended(tenant_id="acme", meta=META),
    ],
)
def test_recheck_refuses_a_key_once_it_no_longer_holds(event: object) -> None:
    index = _index()
    key = _key()
    assert recheck(index, key) is key  # unchanged: the very principal, nothing built
    index.apply(event)  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated):
        recheck(index, _key())


def test_recheck_re_derives_permissions_after_a_role_change() -> None:
    index = _index()
    index.apply(UserRoleChanged(tenant_id="acme", meta=META, user_id="u1", role="viewer"))
    fresh = recheck(index, _key())
    assert fresh.role == "viewer" and fresh.permissions == permissions_of("viewer") and fresh != _key()


def test_recheck_refuses_a_token_whose_session_ended_or_that_expired() -> None:
    index = _index()
    token = _token()
    assert recheck(index, token) is token
    assert recheck(index, _token(session_id="started-elsewhere-a-moment-ago")).session_id
    with pytest.raises(Unauthenticated, match="expired"):
        recheck(index, _token(expires_in=-1))
    index.apply(SessionRevoked(tenant_id="acme", meta=META, family_id="s1", reason="password_changed"))
    with pytest.raises(Unauthenticated, match="session has been ended"):
        recheck(index, _token())
    key = _key()
    assert recheck(index, key) is key  # the user's API keys are not sessions


async def test_the_watch_ends_the_connections_a_change_concerns_once() -> None:
    index = _index()
    watch = CredentialWatch(index)
    ended: list[tuple[str, str]] = []
    watch.watch(_key(), lambda why: ended.append(("key", why)))
    watch.watch(_token(), lambda why: ended.append(("token", why)))
    index.apply(LoginAttempted(tenant_id="acme", meta=META, email_sha256="2" * 64, success=False))
    index.apply(TenantSuspended(tenant_id="other", meta=META))
    assert ended == [] and watch.watching("acme") == 2
    index.apply(SessionRevoked(tenant_id="acme", meta=META, family_id="s1", reason="logout"))
    assert ended == [("token", "the access token's session has been ended")]
    index.apply(UserRoleChanged(tenant_id="acme", meta=META, user_id="u1", role="user"))
    index.apply(UserDeactivated(tenant_id="acme", meta=META, user_id="u1"))
    assert [who for who, _ in ended] == ["token", "key"] and "role is now 'user'" in ended[1][1]
    assert watch.watching("acme") == 0


async def test_watching_a_credential_that_no_longer_holds_ends_it_at_once() -> None:
    index = _index()
    index.apply(ApiKeyRevoked(tenant_id="acme", meta=META, key_id="k1"))
    ended: list[str] = []
    CredentialWatch(index).watch(_key(), ended.append)
    assert ended == ["the API key is not valid"]


async def test_the_watch_ends_a_connection_when_its_credential_expires() -> None:
    index = _index()
    ended = asyncio.Event()
    principal = _token(expires_in=(datetime.now(UTC) - NOW).total_seconds() + 0.1)
    CredentialWatch(index).watch(principal, lambda why: ended.set())
    assert not ended.is_set()
    await asyncio.wait_for(ended.wait(), 0.5)


def test_a_failing_change_listener_does_not_stop_the_fold() -> None:
    index = _index()

    def broken(event: object) -> None:
        raise RuntimeError("a bug in a listener")

    index.on_change(broken)
    index.apply(ApiKeyRevoked(tenant_id="acme", meta=META, key_id="k1"))
    assert index.api_keys["k1"].revoked
