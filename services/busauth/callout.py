"""The authorization service: NATS asks it about every connection that is not a platform user.

nats.conf's ``auth_callout`` block sends each such connection's CONNECT (its token, name and
address) as a signed request on ``$SYS.REQ.USER.AUTH``. The service admits a module presenting
a live credential issued by ``POST /v1/modules`` — answering with a user JWT that carries the
module's permissions (:mod:`.permissions`) — and refuses everything else, anonymous
connections included.

It follows the IDENTITY stream like every gateway does (:class:`IdentityIndex`), and remembers
which connections it admitted with which credential. When a credential is revoked or rotated,
or the module's capabilities change, it disconnects those connections through the system
account (``$SYS.REQ.SERVER.<server>.KICK``): revocation takes effect within ``sweep_interval``,
and a module with a current credential reconnects at once under its new permissions.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from democratic_ai.services.identity import IdentityIndex, ModuleState

from .natsjwt import InvalidClaims, Signer, decode_request
from .permissions import module_permissions

__all__ = ["ACCOUNT", "BusAuthorizer"]

log = logging.getLogger(__name__)

ACCOUNT = "DAI"  # the account of nats.conf every platform connection lives in
_AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
_DISCONNECTS = "$SYS.ACCOUNT.*.DISCONNECT"
_CATCH_UP_SECONDS = 1.0  # within the server's callout timeout (2 s)


@dataclass(frozen=True, slots=True)
class _Admitted:
    """A connection admitted as a module, and what its permissions were computed from."""

    server_id: str
    client_id: int
    module_id: str
    credential_sha256: str
    capabilities: tuple[str, ...]


class BusAuthorizer:
    """Answers the server's authorization requests for module connections."""

    def __init__(self, signer: Signer, index: IdentityIndex, sweep_interval: float = 0.1) -> None:
        self._signer = signer
        self._index = index
        self._sweep_interval = sweep_interval
        self._admitted: dict[tuple[str, int], _Admitted] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: list[object] = []
        self._sys: NATS | None = None

    async def start(self, auth: NATS, system: NATS) -> None:
        """Serve on ``auth`` (a callout user of the platform account); disconnect through ``system``."""
        self._sys = system
        await self._index.start(auth.jetstream())
        self._subscriptions = [
            await auth.subscribe(_AUTH_SUBJECT, cb=self._on_request),
            await system.subscribe(_DISCONNECTS, cb=self._on_disconnect),
        ]
        await auth.flush()
        await system.flush()
        self._tasks.append(asyncio.create_task(self._sweep(), name="busauth-sweep"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for subscription in self._subscriptions:
            await subscription.unsubscribe()  # type: ignore[attr-defined]
        await self._index.stop()

    async def _on_request(self, msg: Msg) -> None:
        try:
            claims = decode_request(msg.data.decode())
            request = claims["nats"]
            user_nkey = request["user_nkey"]
            server_id = request["server_id"]["id"]
            client_id = int(request["client_info"]["id"])
            token = request.get("connect_opts", {}).get("auth_token") or ""
        except (InvalidClaims, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            log.warning("ignored an authorization request that could not be read: %s", exc)
            return
        module = await self._module_for(token) if isinstance(token, str) and token else None
        if module is None:
            address = request.get("client_info", {}).get("host", "?")
            log.info(
                "refused a bus connection from %s: %s",
                address,
                "no credential" if not token else "not a live module credential",
            )
            answer = self._signer.response(user_nkey, server_id, error="not a live module credential")
        else:
            user = self._signer.user(user_nkey, ACCOUNT, f"module:{module.module_id}", module_permissions(module))
            answer = self._signer.response(user_nkey, server_id, user_jwt=user)
            self._admitted[(server_id, client_id)] = _Admitted(
                server_id, client_id, module.module_id, module.credential_sha256, tuple(module.capabilities)
            )
            log.info("admitted module %s of tenant %s to the bus", module.module_id, module.tenant_id)
        await msg.respond(answer.encode())

    async def _module_for(self, token: str) -> ModuleState | None:
        """The live module ``token`` is the credential of. A credential issued moments ago may
        not be folded yet: an unknown one is looked up again once the index has caught up with
        the stream as it is now (bounded by ``_CATCH_UP_SECONDS``), so that a module started
        right after ``POST /v1/modules`` or a rotation is admitted rather than refused."""
        module = self._index.module_for_credential(token)
        if module is not None:
            return module
        try:
            await self._index.catch_up(_CATCH_UP_SECONDS)
        except (NatsError, TimeoutError) as exc:
            log.info("could not catch up with the identity stream before answering: %r", exc)
        return self._index.module_for_credential(token)

    async def _on_disconnect(self, msg: Msg) -> None:
        try:
            event = json.loads(msg.data)
            key = (event["server"]["id"], int(event["client"]["id"]))
        except (ValueError, KeyError, TypeError):
            return
        self._admitted.pop(key, None)

    def _stale(self, admitted: _Admitted) -> bool:
        """Whether the credential or the permissions a connection was admitted with have changed."""
        module = self._index.modules.get(admitted.module_id)
        return (
            module is None
            or module.revoked
            or module.credential_sha256 != admitted.credential_sha256
            or tuple(module.capabilities) != admitted.capabilities
            or self._suspended(module.tenant_id)
        )

    def _suspended(self, tenant_id: str) -> bool:
        tenant = self._index.tenants.get(tenant_id)
        return tenant is not None and tenant.suspended

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            for key, admitted in list(self._admitted.items()):
                if self._stale(admitted):
                    await self._kick(admitted)
                    self._admitted.pop(key, None)

    async def _kick(self, admitted: _Admitted) -> None:
        if self._sys is None:
            return
        subject = f"$SYS.REQ.SERVER.{admitted.server_id}.KICK"
        try:
            await self._sys.request(subject, json.dumps({"cid": admitted.client_id}).encode(), timeout=2.0)
        except NatsError as exc:
            log.error("could not disconnect module %s (client %d): %s", admitted.module_id, admitted.client_id, exc)
            return
        log.info("disconnected module %s: its credential or permissions changed", admitted.module_id)
