"""Secrets off the bus: JWT signing keys and password hashes are sealed under the KEK, a wrong KEK
is refused with a clear error, and destroying a user's data key makes their sealed fields unreadable."""

from __future__ import annotations

import base64
import io
import logging
import stat
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError, NotFoundError

from democratic_ai.contracts.envelope import Meta
from democratic_ai.contracts.identity_events import UserRegistered, decode_event, encode_event
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.replay import ReplayOptions, plan_replay, replay
from democratic_ai.services.gateway.state import IDENTITY, KEY_RING
from democratic_ai.services.identity import (
    CannotUnseal,
    KekUnavailable,
    KeyEncryptionKey,
    KeyRing,
    UserKeyStore,
    generate_kek_file,
    load_kek,
)
from democratic_ai.services.identity.passwords import PASSWORD_HASHER
from democratic_ai.services.identity.tokens import BUCKET, InvalidToken
from democratic_ai.services.identity.user_keys import USER_KEYS_BUCKET

from support.client import http
from support.gateway import Gateway, StartGateway
from support.identity import PASSWORD, login, new_tenant, new_user
from support.names import unique
from support.projections import caught_up
from support.waiting import eventually

# The KEK ------------------------------------------------------------------------------------


def test_the_kek_comes_from_a_file_or_the_environment_with_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "credentials" / "kek"
    written = generate_kek_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_kek({"DAI_KEK_FILE": str(path)}) == written
    assert load_kek({"DAI_KEK": written.to_text()}) == written
    assert load_kek({"DAI_KEK_FILE": str(path), "DAI_KEK": KeyEncryptionKey.generate().to_text()}) == written
    with pytest.raises(FileExistsError):
        generate_kek_file(path)  # never replaces a KEK: that would lose every sealed secret
    assert written.to_text() not in repr(written) and written.key_id in repr(written)

    with pytest.raises(KekUnavailable, match="No key-encryption key is configured: set DAI_KEK_FILE"):
        load_kek({})
    with pytest.raises(ValueError, match="DAI_KEK must decode to 32 bytes, not 3"):
        load_kek({"DAI_KEK": "abcd"})
    with pytest.raises(KekUnavailable, match="cannot be read"):
        load_kek({"DAI_KEK_FILE": str(tmp_path / "missing")})


# JWT signing keys ---------------------------------------------------------------------------


def _clear_forms(private: Ed25519PrivateKey) -> list[bytes]:
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    forms = [raw, der, raw.hex().encode()]
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        forms += [encode(raw), encode(raw).rstrip(b"="), encode(der).rstrip(b"=")]
    return forms


async def test_the_jwt_key_bucket_holds_no_private_key_in_clear(gateway: Gateway, nc: NATS) -> None:
    kv = await nc.jetstream().key_value(BUCKET)
    stored = {key: (await kv.get(key)).value for key in await kv.keys()}
    ring = gateway.app[KEY_RING]
    assert ring._keys and set(ring._keys) <= set(stored)
    for value in stored.values():
        assert b"PRIVATE KEY" not in value and b"private_pem" not in value
        assert msgspec.json.decode(value)["private_key"].startswith("dai-se1.")
        for key in ring._keys.values():
            assert not any(form in value for form in _clear_forms(key.private))


async def test_a_key_ring_with_the_wrong_kek_refuses_the_keys(
    nc: NATS, kek: KeyEncryptionKey, caplog: pytest.LogCaptureFixture
) -> None:
    right, wrong = KeyRing(kek), KeyRing(KeyEncryptionKey.generate())
    await right.start(nc.jetstream())
    kv = await nc.jetstream().key_value(BUCKET)
    try:
        with caplog.at_level(logging.ERROR, logger="democratic_ai.services.identity.tokens"):
            await wrong.start(nc.jetstream())
        usable = {k["kid"] for k in right.jwks()["keys"]}
        own = {k["kid"] for k in wrong.jwks()["keys"]}
        assert usable and own and not usable & own  # it made a key of its own instead
        assert any(
            f"skipped JWT signing key {kid}" in r.getMessage()
            and "wrapped by key-encryption key" in r.getMessage()
            and "DAI_KEK_FILE" in r.getMessage()
            for r in caplog.records
            for kid in usable
        )
        token, _, _ = right.issue({"sub": "u", "tenant_id": "t"})
        with pytest.raises(InvalidToken, match="no known signing key"):
            wrong.verify(token)
    finally:
        await wrong.stop()
        for kid in {k["kid"] for k in wrong.jwks()["keys"]}:
            await kv.delete(kid)  # leave the shared bucket as the session's KEK expects it
        await right.stop()


async def test_unreadable_and_clear_keys_in_the_bucket_are_never_used(nc: NATS, kek: KeyEncryptionKey) -> None:
    kv = await nc.jetstream().key_value(BUCKET)
    garbage, legacy = unique("garbage"), unique("legacy")
    pem = (
        Ed25519PrivateKey.generate()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    await kv.put(garbage, b"not json")
    await kv.put(legacy, msgspec.json.encode({"kid": legacy, "private_pem": pem, "created_at": datetime.now(UTC)}))
    ring = KeyRing(kek)
    try:
        await ring.start(nc.jetstream())
        kids = {k["kid"] for k in ring.jwks()["keys"]}
        assert kids and garbage not in kids and legacy not in kids
        with pytest.raises(KeyNotFoundError):
            await kv.get(legacy)  # a key stored in clear is deleted, not kept for anyone to read
    finally:
        await ring.stop()
        await kv.delete(garbage)


# Password hashes ----------------------------------------------------------------------------


async def _identity_text(nc: NATS, tenant: str) -> tuple[str, list[dict]]:
    out = io.BytesIO()
    js = nc.jetstream()
    await replay(js, await plan_replay(js, ReplayOptions(stream="IDENTITY", tenant=tenant)), out)
    text = out.getvalue().decode()
    return text, [msgspec.json.decode(line) for line in text.splitlines()]


async def test_replaying_identity_finds_no_password_hash(gateway: Gateway, nc: NATS, pool: asyncpg.Pool) -> None:
    tenant = await new_tenant(gateway)
    admin = await new_user(gateway, tenant, "tenant_admin")
    user = await new_user(gateway, tenant, "user")
    tokens = await login(gateway, tenant, user)
    status, body = await http(
        "PATCH",
        f"{gateway.url}/v1/tenants/{tenant}/users/{user['user_id']}",
        json={"password": PASSWORD + "!", "current_password": PASSWORD},
        credential=tokens["access_token"],
    )
    assert status == 200, body
    await login(gateway, tenant, admin)

    text, records = await _identity_text(nc, tenant)
    kinds = [r["type"] for r in records]
    assert kinds.count("user.registered") == 2 and kinds.count("user.password_changed") == 1
    assert "$argon2" not in text
    assert all(r["event"]["password_hash"].startswith("dai-se1.") for r in records if "password_hash" in r["event"])
    # The read models never held the hash; they hold neither form now.
    await caught_up(nc, pool, "identity")
    async with pool.acquire() as conn:
        columns = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND column_name LIKE '%password%'"
        )
        users = await conn.fetch("SELECT * FROM users WHERE tenant_id = $1", tenant)
    assert columns == [] and len(users) == 2
    assert not any("$argon2" in str(v) or "dai-se1." in str(v) for row in users for v in row.values())


async def test_login_works_after_register_change_password_and_sealing_an_old_hash(gateway: Gateway, nc: NATS) -> None:
    tenant = await new_tenant(gateway)
    user = await new_user(gateway, tenant, "developer")
    tokens = await login(gateway, tenant, user)
    me = f"{gateway.url}/v1/tenants/{tenant}/users/{user['user_id']}"
    status, _ = await http(
        "PATCH",
        me,
        json={"password": PASSWORD + "?", "current_password": "wrong wrong wrong"},
        credential=tokens["access_token"],
    )
    assert status == 403
    status, _ = await http(
        "PATCH", me, json={"password": PASSWORD + "?", "current_password": PASSWORD}, credential=tokens["access_token"]
    )
    assert status == 200
    await login(gateway, tenant, {**user, "password": PASSWORD + "?"})
    status, _ = await http(
        "POST", f"{gateway.url}/v1/auth/login", json={"tenant_id": tenant, "email": user["email"], "password": PASSWORD}
    )
    assert status == 401

    # An event written before sealing holds the hash in clear: it still folds and logs in, and
    # the login seals it (the old event stays in the log; the log is permanent).
    email, user_id = f"{unique('old')}@example.com", unique("u")
    await nc.jetstream().publish(
        f"iam.{tenant}.email.legacy-{unique('x')}",
        encode_event(
            UserRegistered(
                tenant_id=tenant,
                meta=Meta(at=datetime.now(UTC)),
                user_id=user_id,
                email=email,
                role="user",
                password_hash=PASSWORD_HASHER.hash(PASSWORD),
            )
        ),
    )
    await eventually(lambda: user_id in gateway.app[IDENTITY].users, "the gateway to know the user", timeout=2.0)
    await login(gateway, tenant, {"email": email, "password": PASSWORD})
    assert gateway.app[IDENTITY].users[user_id].sealed_password_hash.startswith("dai-se1.")
    msg = await nc.jetstream().get_last_msg("IDENTITY", f"iam.{tenant}.user.{user_id}")
    changed = decode_event(msg.data)
    assert changed.rehash and changed.password_hash.startswith("dai-se1.")  # type: ignore[union-attr]
    await login(gateway, tenant, {"email": email, "password": PASSWORD})


async def test_login_with_the_wrong_kek_is_a_clear_error(start_gateway: StartGateway, nc: NATS) -> None:
    right = await start_gateway()
    tenant = await new_tenant(right)
    user = await new_user(right, tenant, "user")
    wrong = await start_gateway(kek=KeyEncryptionKey.generate())
    try:
        status, body = await http(
            "POST",
            f"{wrong.url}/v1/auth/login",
            json={"tenant_id": tenant, "email": user["email"], "password": PASSWORD},
        )
        assert status == 503, body
        assert body["error"]["code"] == "NOT_READY"
        assert "cannot open its password store" in body["error"]["message"]
        status, body = await http(
            "PATCH",
            f"{wrong.url}/v1/tenants/{tenant}/users/{user['user_id']}",
            json={"password": PASSWORD + "#"},
            credential=right.api_key,
        )
        assert status == 503 and body["error"]["code"] == "NOT_READY", body  # sealing a new one, too
        await login(right, tenant, user)  # the right KEK still works beside it
    finally:
        kv = await nc.jetstream().key_value(BUCKET)
        for kid in {k["kid"] for k in wrong.app[KEY_RING].jwks()["keys"]}:
            await kv.delete(kid)  # the wrong KEK's own signing key: other tests' gateways would skip it


def _on_disk(store_dir: Path, needle: bytes) -> bool:
    """Whether any file of the JetStream store of the user key bucket holds ``needle``."""
    return any(needle in path.read_bytes() for path in store_dir.rglob(f"KV_{USER_KEYS_BUCKET}/**/*") if path.is_file())


async def test_destroying_a_users_key_makes_their_sealed_fields_unreadable(
    gateway: Gateway, nc: NATS, kek: KeyEncryptionKey, nats_server: NatsServer
) -> None:
    tenant = await new_tenant(gateway)
    erased, kept = await new_user(gateway, tenant, "user"), await new_user(gateway, tenant, "user")
    await login(gateway, tenant, erased)  # the gateway now holds the erased user's key in its cache
    users = gateway.app[IDENTITY].users
    sealed_erased = users[erased["user_id"]].sealed_password_hash
    sealed_kept = users[kept["user_id"]].sealed_password_hash

    store = UserKeyStore(nc.jetstream(), kek)  # another replica's store
    await store.start()
    try:
        assert (await store.open(tenant, erased["user_id"], sealed_erased) or "").startswith("$argon2id$")
        with pytest.raises(CannotUnseal):
            await store.open(tenant, kept["user_id"], sealed_erased)  # sealed values are bound to their user
        kv = await nc.jetstream().key_value(USER_KEYS_BUCKET)
        entry = await kv.get(f"{tenant}.{erased['user_id']}")
        await eventually(
            lambda: _on_disk(nats_server.store_dir, entry.value), "the wrapped key on disk", timeout=2.0, interval=0.02
        )

        assert await store.destroy(tenant, erased["user_id"]) is True
        assert await store.open(tenant, erased["user_id"], sealed_erased) is None
        assert await store.destroy(tenant, erased["user_id"]) is False
        with pytest.raises(KeyNotFoundError):
            await kv.get(f"{tenant}.{erased['user_id']}")
        with pytest.raises(NotFoundError):
            await nc.jetstream().get_msg(f"KV_{USER_KEYS_BUCKET}", seq=entry.revision)
        # Erased, not just hidden: the bytes of the wrapped key are gone from the server's files.
        await eventually(
            lambda: not _on_disk(nats_server.store_dir, entry.value),
            "the wrapped key gone from disk",
            timeout=2.0,
            interval=0.02,
        )

        # The gateway's own store drops its cached copy: the erased user can no longer log in.
        wrong_now = {"tenant_id": tenant, "email": erased["email"], "password": PASSWORD}

        async def refused() -> bool:
            return (await http("POST", f"{gateway.url}/v1/auth/login", json=wrong_now))[0] == 401

        await eventually(
            refused, "the gateway to stop opening the destroyed user's password hash", timeout=2.0, interval=0.02
        )
        await login(gateway, tenant, kept)
        assert (await store.open(tenant, kept["user_id"], sealed_kept) or "").startswith("$argon2id$")
    finally:
        await store.stop()


@pytest.mark.parametrize("argv", [["gateway"], ["identity", "rotate-jwt-key"]])
def test_commands_without_a_kek_exit_with_one_clear_line(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from democratic_ai.ops.cli import main

    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")  # never reached: the KEK is checked first
    monkeypatch.setenv("DATABASE_APP_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("DAI_BUS_CREDENTIAL", "dai-role.gateway.never-used")
    monkeypatch.delenv("DAI_KEK", raising=False)
    monkeypatch.delenv("DAI_KEK_FILE", raising=False)
    with pytest.raises(SystemExit, match=r"^dai: No key-encryption key is configured: set DAI_KEK_FILE"):
        main(argv)
