"""Which tenant a module acts for: the tenant of the call it is serving, else the tenant that owns it.

A module serves every tenant's calls. When a handler calls another capability meanwhile, it works
*for its caller*: the nested call carries the caller's tenant, so it is recorded as that tenant's
and the inner module learns whom it works for. The tenant of the call being served lives in a
context variable that the module sets around each handler (calls plain or streamed, and events);
tasks a handler starts inherit it. Outside any handler — a background task started with the
module, say — the module acts for its own tenant.

Naming a tenant explicitly (``tenant=``) still wins, with one limit: a module owned by a tenant may
call only for its own tenant or the one whose call it is serving. Any other would act for a tenant
that never asked — spend its quota, reach its data through other modules. The bus cannot draw
that line: a module serves any tenant's calls, so its connection may call for any tenant, and
whose call a handler serves is known only here. So this guards honest modules against mistakes (a
tenant id taken from a payload, a stale variable), not against a hostile one; the records name the
source module of every call.

Events are narrower. A module owned by a tenant hears that tenant's events only, and the bus lets
it publish there only — else any tenant's module could inject events that another tenant's
modules trust. So its events always go to its own tenant, also while it serves another tenant's
call, and naming any other tenant is refused. A platform module (owned by ``system``) calls and
publishes for the tenant it serves, or whichever it names.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from contextvars import ContextVar, Token

from nats.aio.client import Client as NATS

from democratic_ai.contracts import subjects

from .client import Client
from .errors import TenantError

__all__ = ["ModuleClient", "call_tenant", "event_tenant", "serving", "serving_tenant"]

_serving: ContextVar[str | None] = ContextVar("dai_serving_tenant", default=None)


class _Serving:
    """The context of :func:`serving`: a class, not a ``@contextmanager`` generator, since it runs
    around every call and a generator's context costs about three times as much."""

    __slots__ = ("_tenant", "_token")

    _token: Token[str | None]

    def __init__(self, tenant: str) -> None:
        self._tenant = tenant

    def __enter__(self) -> None:
        self._token = _serving.set(self._tenant)

    def __exit__(self, *exc_info: object) -> None:
        _serving.reset(self._token)


def serving(tenant: str) -> AbstractContextManager[None]:
    """Mark the code inside as serving ``tenant``'s call (or event): ``with serving(tenant): ...``."""
    return _Serving(tenant)


def serving_tenant() -> str | None:
    """The tenant of the call being served here, or ``None`` outside any handler."""
    return _serving.get()


def call_tenant(owner: str, named: str | None) -> str:
    """The tenant a call or event carries when a module owned by ``owner`` names ``named`` (or nothing)."""
    current = _serving.get()
    if not named:
        return current or owner
    subjects.validate_token(named, "tenant")
    if owner != subjects.SYSTEM_TENANT and named != owner and named != current:
        serving_text = f"the tenant of the call it serves ({current!r})" if current else "no call (it serves none now)"
        raise TenantError(
            f"a module owned by tenant {owner!r} may act for its own tenant or {serving_text}, not for {named!r}."
        )
    return named


def event_tenant(owner: str, named: str | None) -> str:
    """The tenant an event carries when a module owned by ``owner`` publishes it naming ``named`` (or nothing)."""
    if owner == subjects.SYSTEM_TENANT:
        return call_tenant(owner, named)
    if named and named != owner:
        subjects.validate_token(named, "tenant")
        raise TenantError(
            f"a module owned by tenant {owner!r} publishes events for {owner!r} only (it hears no other"
            f" tenant's, and the bus lets it publish there alone), not for {named!r}."
        )
    return owner


class ModuleClient(Client):
    """The client of a module: its calls and events carry the tenant it is acting for."""

    def __init__(self, nc: NATS, *, module_id: str, owner: str) -> None:
        # The bus lets a module record answers of its own capabilities only (services/busauth).
        super().__init__(nc, source_id=module_id, tenant=owner, record_failures=False)

    def _tenant_for(self, tenant: str | None) -> str:
        return call_tenant(self._tenant, tenant)

    def _event_tenant_for(self, tenant: str | None) -> str:
        return event_tenant(self._tenant, tenant)
