"""Access tokens: EdDSA-signed JWTs with a ``kid``, from a key ring every gateway shares.

The ring lives in the NATS KV bucket ``dai_jwt_keys`` (kept out of the IDENTITY stream so that
replaying the log never hands out signing keys). Each gateway follows the bucket: a rotated key
reaches all replicas at once, and old keys keep verifying until the tokens they signed expire,
so a rotation logs nobody out. Verification pins the algorithm and requires exp, iss and aud,
then reads the claims the platform relies on into :class:`AccessClaims`, whose types are checked:
a token signed by the ring but with a claim of the wrong type (say, ``"exp": "9999999999"``,
which PyJWT accepts) is as invalid as a forged one.

A stored key is sealed (see :mod:`.sealing`): its private key encrypted with a data key of its
own, that data key wrapped by the platform's KEK. Reading the bucket without the KEK yields no
key, and writing to it without the KEK cannot plant one. A ring whose KEK does not open a key
skips it and says so in the log; a key written in clear by an older version is never used and
is deleted once the ring has a sealed key of its own.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jwt
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from democratic_ai.contracts.ordered import OrderedConsumer
from democratic_ai.contracts.streams import stream_replicas

from .sealing import CannotUnseal, KeyEncryptionKey, new_data_key, open_sealed, seal

__all__ = [
    "ACCESS_TOKEN_TTL",
    "AUDIENCE",
    "ISSUER",
    "AccessClaims",
    "InvalidToken",
    "KeyRing",
    "check_kek",
    "rotate_signing_key",
    "signing_key_bucket",
]

log = logging.getLogger(__name__)

BUCKET = "dai_jwt_keys"
_KV_PREFIX = f"$KV.{BUCKET}."
ALGORITHM = "EdDSA"
ISSUER = "democratic-ai"
AUDIENCE = "democratic-ai-api"
ACCESS_TOKEN_TTL = timedelta(minutes=15)
# A replaced key stays for verification this long after its successor appears: longer than
# any token it signed can live.
RETIRED_KEY_GRACE = 2 * ACCESS_TOKEN_TTL


class InvalidToken(Exception):
    """A token that is malformed, forged, expired, for someone else, or signed by an unknown key."""


# 9999-12-31T23:59:59Z: the last instant a datetime can hold.
_LAST_TIMESTAMP = 253402300799


class AccessClaims(msgspec.Struct, frozen=True):
    """The claims of a verified access token that the platform reads, with their types checked."""

    sub: str
    jti: str
    exp: Annotated[int, msgspec.Meta(ge=0, le=_LAST_TIMESTAMP)]
    iat: Annotated[int, msgspec.Meta(ge=0, le=_LAST_TIMESTAMP)]
    tenant_id: str = ""
    sid: str = ""  # the session (refresh-token family) it was issued under; empty in older tokens


class _StoredKey(msgspec.Struct, frozen=True, omit_defaults=True):
    kid: str
    created_at: datetime
    data_key: str = ""  # this key's own data key, wrapped by the KEK
    private_key: str = ""  # the raw Ed25519 private key (base64url), sealed with data_key
    private_pem: str = ""  # the key in clear, as versions before sealing wrote it: never used


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str
    private: Ed25519PrivateKey
    public: Ed25519PublicKey
    created_at: datetime


async def signing_key_bucket(js: JetStreamContext, replicas: int | None = None) -> KeyValue:
    """The JWT signing keys' bucket, made if it does not exist yet, on ``replicas`` copies
    (default: :func:`~democratic_ai.contracts.streams.stream_replicas`, else one)."""
    try:
        return await js.key_value(BUCKET)
    except BucketNotFoundError:
        pass
    # Same config from every replica: a concurrent create of it succeeds.
    return await js.create_key_value(
        KeyValueConfig(
            bucket=BUCKET,
            history=1,
            storage=StorageType.FILE,
            description="JWT signing keys",
            replicas=replicas or stream_replicas() or 1,
        )
    )


def _context(kid: str) -> str:
    return f"{BUCKET}/{kid}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def rotate_signing_key(js: JetStreamContext, kek: KeyEncryptionKey) -> str:
    """Add a new signing key, sealed under ``kek``, used from now on; returns its kid."""
    kv = await signing_key_bucket(js)
    private = Ed25519PrivateKey.generate()
    kid = uuid.uuid4().hex[:16]
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    data_key = new_data_key()
    stored = _StoredKey(
        kid=kid,
        created_at=datetime.now(UTC),
        data_key=kek.wrap(data_key, _context(kid)),
        private_key=seal(data_key, _b64(raw), _context(kid)),
    )
    await kv.create(kid, msgspec.json.encode(stored))
    return kid


async def check_kek(js: JetStreamContext, kek: KeyEncryptionKey) -> None:
    """Raise :class:`CannotUnseal` when the platform has sealed signing keys and ``kek`` opens none:
    it is not the KEK the gateways use. A command that seals a secret with another KEK (a password
    hash, through the user's data key) would record what no gateway can open. No key stored yet:
    nothing to tell by, and nothing raised."""
    kv = await signing_key_bucket(js)
    try:
        names = await kv.keys()
    except NoKeysError:
        return
    sealed = 0
    for name in names:
        try:
            entry = await kv.get(name)
            stored = msgspec.json.decode(entry.value or b"", type=_StoredKey)
        except (KeyNotFoundError, msgspec.DecodeError):
            continue  # removed meanwhile, or unreadable: the ring skips it too
        if not stored.private_key:
            continue
        sealed += 1
        try:
            _unseal(stored, kek)
        except CannotUnseal:
            continue
        return
    if sealed:
        raise CannotUnseal(f"this key-encryption key opens none of the platform's {sealed} JWT signing key(s)")


def _unseal(stored: _StoredKey, kek: KeyEncryptionKey) -> Ed25519PrivateKey:
    """The private key of ``stored``; raises :class:`CannotUnseal`."""
    data_key = kek.unwrap(stored.data_key, _context(stored.kid))
    text = open_sealed(data_key, stored.private_key, _context(stored.kid))
    try:
        return Ed25519PrivateKey.from_private_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except ValueError:
        raise CannotUnseal(f"the sealed key {stored.kid!r} is not an Ed25519 private key.") from None


class KeyRing:
    """The signing keys, kept current by following the KV bucket; ``kek`` opens them."""

    def __init__(self, kek: KeyEncryptionKey) -> None:
        self._kek = kek
        self._keys: dict[str, _Key] = {}
        self._in_clear: set[str] = set()  # kids stored in clear by an older version, to delete
        self._follower: OrderedConsumer | None = None
        self._kv: KeyValue | None = None

    async def start(self, js: JetStreamContext) -> None:
        self._kv = await signing_key_bucket(js)
        # The last value of every key, then each change; resumes by sequence after reconnects
        # and server restarts, so a rotation or a deletion is never missed.
        self._follower = OrderedConsumer(
            js, f"KV_{BUCKET}", f"{_KV_PREFIX}>", self._on_entry, start=DeliverPolicy.LAST_PER_SUBJECT
        )
        # Returns once every stored key is applied, not at the first: the first may be one this
        # ring cannot open, and a ring that decided too early would make a needless new key.
        await self._follower.start(10.0)
        if not self._keys:
            try:
                await rotate_signing_key(js, self._kek)
            except KeyWrongLastSequenceError:
                pass  # another gateway created one at the same instant: it arrives by the follower
            await self._until(lambda: bool(self._keys))
        await self._prune()

    async def stop(self) -> None:
        if self._follower is not None:
            await self._follower.stop()
            self._follower = None

    async def _until(self, condition: Any, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the JWT key ring did not load")
            await asyncio.sleep(0.01)

    async def _on_entry(self, msg: Msg) -> None:
        key = msg.subject[len(_KV_PREFIX) :]
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
            self._keys.pop(key, None)
            self._in_clear.discard(key)
            return
        self._load(key, msg.data)

    def _load(self, kv_key: str, value: bytes) -> None:
        """Add one stored key to the ring, or log why it cannot be used. Never raises."""
        try:
            stored = msgspec.json.decode(value, type=_StoredKey)
        except msgspec.DecodeError as exc:
            log.error("skipped JWT signing key %s: its stored form is unreadable (%s)", kv_key, exc)
            return
        if not stored.private_key:
            if stored.private_pem:
                log.warning(
                    "JWT signing key %s is stored in clear by an older version: it is not used,"
                    " and is deleted once this ring has a sealed key",
                    kv_key,
                )
                self._in_clear.add(kv_key)
            else:
                log.error("skipped JWT signing key %s: it holds no private key", kv_key)
            return
        try:
            private = _unseal(stored, self._kek)
        except CannotUnseal as exc:
            log.error(
                "skipped JWT signing key %s: %s Is DAI_KEK_FILE (or DAI_KEK) this platform's key-encryption key?",
                kv_key,
                exc,
            )
            return
        self._keys[stored.kid] = _Key(stored.kid, private, private.public_key(), stored.created_at)

    async def _prune(self) -> None:
        """Delete keys stored in clear, and keys whose successor has existed longer than any
        token they signed can live. Keys this ring cannot open are left alone: they may be
        another KEK's, and deleting them is not a misconfigured replica's call."""
        if self._kv is None:
            return
        for kid in sorted(self._in_clear):
            await self._kv.delete(kid)
            log.info("deleted JWT signing key %s, which was stored in clear", kid)
        if len(self._keys) < 2:
            return
        ordered = sorted(self._keys.values(), key=lambda k: k.created_at)
        now = datetime.now(UTC)
        for key, successor in itertools.pairwise(ordered):
            if now - successor.created_at > RETIRED_KEY_GRACE:
                await self._kv.delete(key.kid)

    def _signing_key(self) -> _Key:
        return max(self._keys.values(), key=lambda k: k.created_at)

    def issue(self, claims: dict[str, Any], ttl: timedelta = ACCESS_TOKEN_TTL) -> tuple[str, str, datetime]:
        """Sign ``claims`` plus jti, iss, aud, iat, exp (``ttl`` from now); returns ``(token, jti, expires_at)``."""
        key = self._signing_key()
        now = datetime.now(UTC)
        expires = now + ttl
        jti = uuid.uuid4().hex
        payload = {**claims, "jti": jti, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": expires}
        token = jwt.encode(payload, key.private, algorithm=ALGORITHM, headers={"kid": key.kid})
        return token, jti, expires

    def verify(self, token: str) -> AccessClaims:
        """The verified claims of ``token``; raises :class:`InvalidToken`."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken("the token names no known signing key")
        try:
            # ``iat`` is required but not compared with this host's clock: the gateway that
            # issued the token stamped it with its own, and one a few seconds ahead would make
            # every other gateway refuse its fresh tokens as "not yet valid". ``exp`` is checked.
            claims = jwt.decode(
                token,
                key.public,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"], "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        try:
            return msgspec.convert(claims, AccessClaims)
        except msgspec.ValidationError as exc:
            raise InvalidToken(f"a claim has the wrong type: {exc}") from None

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public keys as a JSON Web Key Set."""
        keys = []
        for key in sorted(self._keys.values(), key=lambda k: k.created_at):
            raw = key.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
            keys.append({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": key.kid, "alg": ALGORITHM, "use": "sig"})
        return {"keys": keys}
