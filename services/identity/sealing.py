"""Envelope encryption: secrets at rest sealed with data keys, data keys wrapped by one KEK.

The platform has one **key-encryption key** (KEK, 32 random bytes) that never touches NATS:
it comes from a file under the data dir (``DAI_KEK_FILE``, made by ``dai up``) or from an
operator-supplied secret (``DAI_KEK``). Every secret gets a **data key** of its own (one per
JWT signing key, one per user) — AES-256-GCM, 32 random bytes. The data key encrypts the
secret; the KEK encrypts ("wraps") the data key; both ciphertexts may then live on the bus.
Reading a secret needs the KEK *and* the wrapped data key, so:

- replaying a stream or reading a KV bucket without the KEK yields ciphertext only;
- destroying one data key makes every copy of what it sealed unreadable, in old events too
  (crypto-shredding) — the log itself is never rewritten;
- a new KEK later means re-wrapping the small data keys, not re-encrypting every event.

Both forms are text with a version prefix, so the scheme can evolve and a reader can tell
sealed text from values written before sealing existed::

    dai-kw1.<kek id>.<base64url(nonce ‖ AES-GCM(kek, data key))>     a wrapped data key
    dai-se1.<base64url(nonce ‖ AES-GCM(data key, plaintext))>        a sealed value

The nonce is 12 random bytes (a data key seals a handful of values, far below GCM's limits).
Every operation takes a ``context`` string used as associated data: a wrapped key or sealed
value copied to another user's or key's slot fails to open instead of being accepted. The
``kek id`` is a fingerprint of the KEK, so a wrong KEK is reported as such, not as damage.

Errors::

    SealingError
    ├── KekUnavailable   no KEK configured, or not 32 bytes of urlsafe base64 (also a ValueError)
    └── CannotUnseal     wrapped/sealed text this key does not open: wrong KEK, damaged, wrong slot
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEK_ENV",
    "KEK_FILE_ENV",
    "CannotUnseal",
    "KekUnavailable",
    "KeyEncryptionKey",
    "SealingError",
    "generate_kek_file",
    "is_sealed",
    "load_kek",
    "new_data_key",
    "open_sealed",
    "seal",
]

log = logging.getLogger(__name__)

KEK_FILE_ENV = "DAI_KEK_FILE"  # path of a file holding the KEK as urlsafe base64 text
KEK_ENV = "DAI_KEK"  # the same text, for operators who inject secrets as environment variables
KEY_BYTES = 32
NONCE_BYTES = 12
WRAPPED_PREFIX = "dai-kw1."
SEALED_PREFIX = "dai-se1."


class SealingError(Exception):
    """The root of this module's errors."""


class KekUnavailable(SealingError, ValueError):
    """No key-encryption key is configured, or the configured one is malformed."""


class CannotUnseal(SealingError):
    """Text that this key does not open: another KEK wrapped it, it was altered, or it is not ours."""


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _encrypt(key: bytes, plaintext: bytes, context: str) -> str:
    nonce = os.urandom(NONCE_BYTES)
    return _b64encode(nonce + AESGCM(key).encrypt(nonce, plaintext, context.encode()))


def _decrypt(key: bytes, body: str, context: str, what: str) -> bytes:
    try:
        raw = _b64decode(body)
        return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
    except (InvalidTag, binascii.Error, ValueError):
        raise CannotUnseal(f"the {what} for {context!r} does not open: it was altered or belongs elsewhere.") from None


@dataclass(frozen=True, slots=True, repr=False)
class KeyEncryptionKey:
    """The platform's KEK: wraps and unwraps data keys. Its repr shows only its fingerprint."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise KekUnavailable(f"A key-encryption key must be {KEY_BYTES} bytes, not {len(self.secret)}.")

    @classmethod
    def generate(cls) -> KeyEncryptionKey:
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def from_text(cls, text: str, *, source: str = "the key-encryption key") -> KeyEncryptionKey:
        """Parse the urlsafe base64 form (surrounding whitespace allowed); ``source`` names it in errors."""
        source = source[:1].upper() + source[1:]
        try:
            secret = _b64decode(text.strip())
        except (binascii.Error, ValueError):
            raise KekUnavailable(f"{source} is not urlsafe base64 text.") from None
        if len(secret) != KEY_BYTES:
            raise KekUnavailable(f"{source} must decode to {KEY_BYTES} bytes, not {len(secret)}.")
        return cls(secret)

    def to_text(self) -> str:
        return _b64encode(self.secret)

    @property
    def key_id(self) -> str:
        """A fingerprint that names this KEK in wrapped keys and log lines (reveals nothing of it)."""
        return hashlib.sha256(b"dai-kek-id\0" + self.secret).hexdigest()[:16]

    def wrap(self, data_key: bytes, context: str) -> str:
        """``data_key`` encrypted under this KEK, bound to ``context`` (e.g. the KV key it is stored at)."""
        return f"{WRAPPED_PREFIX}{self.key_id}.{_encrypt(self.secret, data_key, context)}"

    def unwrap(self, wrapped: str, context: str) -> bytes:
        """The data key inside ``wrapped``; raises :class:`CannotUnseal`."""
        if not wrapped.startswith(WRAPPED_PREFIX):
            raise CannotUnseal(f"the data key for {context!r} is not in a wrapped form this version reads.")
        key_id, _, body = wrapped[len(WRAPPED_PREFIX) :].partition(".")
        if key_id != self.key_id:
            raise CannotUnseal(
                f"the data key for {context!r} was wrapped by key-encryption key {key_id},"
                f" not by this one ({self.key_id})."
            )
        return _decrypt(self.secret, body, context, "data key")

    def __repr__(self) -> str:
        return f"KeyEncryptionKey(key_id={self.key_id!r})"


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def seal(data_key: bytes, plaintext: str, context: str) -> str:
    """``plaintext`` encrypted under ``data_key``, bound to ``context``."""
    return SEALED_PREFIX + _encrypt(data_key, plaintext.encode(), context)


def open_sealed(data_key: bytes, sealed: str, context: str) -> str:
    """The plaintext inside ``sealed``; raises :class:`CannotUnseal`."""
    if not is_sealed(sealed):
        raise CannotUnseal(f"the value for {context!r} is not in a sealed form this version reads.")
    return _decrypt(data_key, sealed[len(SEALED_PREFIX) :], context, "sealed value").decode()


def is_sealed(text: str) -> bool:
    """Whether ``text`` is a sealed value (rather than one written before sealing existed)."""
    return text.startswith(SEALED_PREFIX)


def load_kek(environ: Mapping[str, str] | None = None) -> KeyEncryptionKey:
    """The KEK named by ``DAI_KEK_FILE`` (preferred) or given in ``DAI_KEK``; raises :class:`KekUnavailable`."""
    env = os.environ if environ is None else environ
    if path := env.get(KEK_FILE_ENV):
        try:
            text = Path(path).read_text()
            mode = Path(path).stat().st_mode
        except OSError as exc:
            raise KekUnavailable(f"{KEK_FILE_ENV} names {path}, which cannot be read: {exc.strerror}.") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the key-encryption key file %s is readable by others than its owner; chmod 600 it", path)
        return KeyEncryptionKey.from_text(text, source=f"the key-encryption key in {path}")
    if text := env.get(KEK_ENV):
        return KeyEncryptionKey.from_text(text, source=KEK_ENV)
    raise KekUnavailable(
        f"No key-encryption key is configured: set {KEK_FILE_ENV} to the path of its file"
        f" (`dai up` creates <data dir>/credentials/kek) or {KEK_ENV} to its urlsafe base64 text."
    )


def generate_kek_file(path: Path | str) -> KeyEncryptionKey:
    """Write a new KEK to ``path`` (mode 0600, parent directories 0700) and return it.

    Refuses (``FileExistsError``) to replace an existing file: a lost KEK makes every sealed
    secret unreadable for good, so replacing one is never a side effect of starting up.
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    kek = KeyEncryptionKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(kek.to_text() + "\n")
    return kek
