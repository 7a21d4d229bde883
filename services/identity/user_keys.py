"""Per-user data keys in the KV bucket ``dai_user_keys``: sealing a user's secrets, and erasing them.

Each user has one data key, made the first time something of theirs is sealed and stored at
``<tenant>.<user id>`` wrapped by the KEK (see :mod:`.sealing`). Only the identity role (the
gateway) may read the bucket — the bus permissions say so — and even then a wrapped key is
useless without the KEK, which never touches NATS.

:meth:`UserKeyStore.destroy` is crypto-shredding: the message holding the wrapped key is erased
from the bucket's stream (JetStream overwrites a deleted message's bytes on disk — which is why
this bucket, unlike a default KV bucket, allows message deletes) and a purge marker left in its
place, which every replica's store sees and drops its cached copy for. From then on every value
sealed for that user — in the IDENTITY log, in a backup of it, anywhere — opens to ``None``; the
log itself is never rewritten. Sealing for the user again afterwards makes a new key, which opens
only what is sealed from then on.

Opening is on the login path, never on the per-call path (API keys are checked by their hash,
which is not sealed). Data keys are cached in memory, bounded, so a login costs no KV round
trip after the first.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, ServerError
from nats.js.kv import KeyValue

from democratic_ai.contracts.ordered import OrderedConsumer
from democratic_ai.contracts.streams import stream_replicas

from .sealing import CannotUnseal, KeyEncryptionKey, is_sealed, new_data_key, open_sealed, seal

__all__ = ["USER_KEYS_BUCKET", "UserKeyStore", "user_key_bucket"]

log = logging.getLogger(__name__)

USER_KEYS_BUCKET = "dai_user_keys"
_STREAM = f"KV_{USER_KEYS_BUCKET}"
_SUBJECT_PREFIX = f"$KV.{USER_KEYS_BUCKET}."
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_REMOVED = ("DEL", "PURGE")
_DELETE_DENIED = 10057  # JetStream's "message delete not permitted"


def _kv_key(tenant_id: str, user_id: str) -> str:
    for value, what in ((tenant_id, "tenant id"), (user_id, "user id")):
        if not _TOKEN.fullmatch(value):
            raise ValueError(f"The {what} {value!r} cannot name a user key: use letters, digits, '_' or '-'.")
    return f"{tenant_id}.{user_id}"


async def user_key_bucket(js: JetStreamContext, replicas: int | None = None) -> KeyValue:
    """The bucket, made as ``create_key_value`` would make it but with message deletes allowed,
    on ``replicas`` copies (default: :func:`~democratic_ai.contracts.streams.stream_replicas`, else one)."""
    try:
        return await js.key_value(USER_KEYS_BUCKET)
    except BucketNotFoundError:
        pass
    # Same config from every replica: a concurrent add_stream of it succeeds.
    await js.add_stream(
        StreamConfig(
            name=_STREAM,
            description="per-user data keys, wrapped by the KEK",
            subjects=[f"{_SUBJECT_PREFIX}>"],
            allow_direct=True,
            allow_rollup_hdrs=True,
            deny_delete=False,
            discard=DiscardPolicy.NEW,
            duplicate_window=120.0,
            max_msgs_per_subject=1,
            storage=StorageType.FILE,
            num_replicas=replicas or stream_replicas() or 1,
        )
    )
    return await js.key_value(USER_KEYS_BUCKET)


class UserKeyStore:
    """Seal, open and destroy per-user secrets; ``start`` before use, ``stop`` after."""

    def __init__(self, js: JetStreamContext, kek: KeyEncryptionKey, *, cache_size: int = 4096) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1.")
        self._js = js
        self._kek = kek
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_size = cache_size
        # Bumped by every removal seen: a key read from the bucket before a removal arrived is
        # not cached, or a replica could go on opening a destroyed user's secrets.
        self._removals = 0
        self._kv: KeyValue | None = None
        self._changes: OrderedConsumer | None = None

    async def start(self) -> None:
        self._kv = await user_key_bucket(self._js)
        # Only removals matter to the cache (a put can only create a key no cache holds), so
        # new messages' headers suffice; the follower resumes by sequence across reconnects
        # and server restarts, so no removal is missed.
        self._changes = OrderedConsumer(
            self._js, _STREAM, f"{_SUBJECT_PREFIX}>", self._on_change, start=DeliverPolicy.NEW, headers_only=True
        )
        await self._changes.start()

    async def stop(self) -> None:
        if self._changes is not None:
            await self._changes.stop()
            self._changes = None
        self._cache.clear()

    async def seal(self, tenant_id: str, user_id: str, plaintext: str) -> str:
        """``plaintext`` sealed with the user's data key (made now if the user has none)."""
        key = _kv_key(tenant_id, user_id)
        return seal(await self._load_or_create(key), plaintext, f"user/{key}")

    async def open(self, tenant_id: str, user_id: str, sealed: str) -> str | None:
        """The plaintext of ``sealed``, or ``None`` once the user's key is destroyed.

        Raises :class:`~.sealing.CannotUnseal` when the stored key was wrapped by another KEK
        or ``sealed`` is damaged or someone else's: that is a fault to report, not an erasure.
        """
        key = _kv_key(tenant_id, user_id)
        if not is_sealed(sealed):
            raise CannotUnseal(f"the value for {key!r} is not sealed.")
        data_key = await self._load(key)
        if data_key is None:
            return None
        return open_sealed(data_key, sealed, f"user/{key}")

    async def destroy(self, tenant_id: str, user_id: str) -> bool:
        """Erase the user's data key for good; ``True`` if there was one."""
        key = _kv_key(tenant_id, user_id)
        kv = self._bucket()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            existed = False
        else:
            try:
                await self._js.delete_msg(_STREAM, entry.revision)  # erases the stored bytes, not just the index
            except ServerError as exc:
                if exc.err_code != _DELETE_DENIED:
                    raise
                log.warning(
                    "the %s bucket denies message deletes (made by create_key_value?): user %s's key"
                    " is purged, but its wrapped bytes may stay on disk until compaction",
                    USER_KEYS_BUCKET,
                    key,
                )
            existed = True
        await kv.purge(key)  # the marker every replica's store evicts on
        self._forget(key)
        log.info("destroyed the data key of user %s", key)
        return existed

    def _bucket(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("the user key store is not started")
        return self._kv

    async def _load(self, key: str) -> bytes | None:
        """The user's data key, from the cache or the bucket; ``None`` if there is none."""
        if (cached := self._cache.get(key)) is not None:
            self._cache.move_to_end(key)
            return cached
        removals = self._removals
        try:
            wrapped = (await self._bucket().get(key)).value
        except KeyNotFoundError:
            return None
        data_key = self._kek.unwrap(wrapped.decode(), f"{USER_KEYS_BUCKET}/{key}")
        self._remember(key, data_key, removals)
        return data_key

    async def _load_or_create(self, key: str) -> bytes:
        while True:
            removals = self._removals
            if (existing := await self._load(key)) is not None:
                return existing
            data_key = new_data_key()
            try:
                await self._bucket().create(key, self._kek.wrap(data_key, f"{USER_KEYS_BUCKET}/{key}").encode())
            except KeyWrongLastSequenceError:
                continue  # another replica made the user's key first: use that one
            self._remember(key, data_key, removals)
            return data_key

    def _remember(self, key: str, data_key: bytes, removals: int) -> None:
        if removals != self._removals:
            return
        self._cache[key] = data_key
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _forget(self, key: str) -> None:
        self._cache.pop(key, None)
        self._removals += 1

    async def _on_change(self, msg: Msg) -> None:
        if (msg.headers or {}).get("KV-Operation") in _REMOVED:
            self._forget(msg.subject[len(_SUBJECT_PREFIX) :])
