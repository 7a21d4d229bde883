"""Connecting to the bus: one place that knows how a process presents its credential.

NATS admits only who presents a credential (see ``ops/RUNBOOK.md``, "Who may do what on the
bus"). There are two kinds, both plain strings:

``dai-role.<role>.<secret>``
    a platform role (gateway, hub, projections, operator, …), one of the users of ``nats.conf``;
    sent as user ``<role>`` with the whole string as its password.
``dai-module.<tenant>.<module>.<secret>``
    a module's credential, issued by ``POST /v1/modules``; sent as a token, which the server
    hands to the platform's authorization service (the auth callout).

A process finds its credential in ``DAI_BUS_CREDENTIAL`` or in the file named by
``DAI_BUS_CREDENTIAL_FILE``; ``NATS_CA_FILE`` names the certificate authority that signed the
server's TLS certificate when ``NATS_URL`` is ``tls://…``.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

__all__ = [
    "CA_FILE_ENV",
    "CREDENTIAL_ENV",
    "CREDENTIAL_FILE_ENV",
    "BusCredentialError",
    "BusOptions",
    "connect",
    "role_of",
]

log = logging.getLogger(__name__)

CREDENTIAL_ENV = "DAI_BUS_CREDENTIAL"
CREDENTIAL_FILE_ENV = "DAI_BUS_CREDENTIAL_FILE"
CA_FILE_ENV = "NATS_CA_FILE"

RECONNECT_WAIT = 0.25  # seconds between attempts to reach a server that went away

_ROLE_PREFIX = "dai-role."
_MODULE_PREFIX = "dai-module."


class BusCredentialError(ValueError):
    """A credential that is missing, unreadable or of no known kind."""


def role_of(credential: str) -> str | None:
    """The role a ``dai-role.<role>.<secret>`` credential names; None for any other string."""
    if not credential.startswith(_ROLE_PREFIX):
        return None
    role, _, secret = credential[len(_ROLE_PREFIX) :].partition(".")
    return role if role and secret else None


@dataclass(frozen=True, slots=True)
class BusOptions:
    """Where the bus is and how to prove who we are to it."""

    url: str
    credential: str
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        if not self.credential:
            raise BusCredentialError(
                f"no bus credential: set {CREDENTIAL_ENV} or {CREDENTIAL_FILE_ENV} (dai up writes one per role"
                " under <data-dir>/credentials/)."
            )
        if role_of(self.credential) is None and not self.credential.startswith(_MODULE_PREFIX):
            raise BusCredentialError(
                "the bus credential is neither a platform role's (dai-role.…) nor a module's (dai-module.…)."
            )

    @classmethod
    def from_env(cls, url: str | None = None, credential_file: Path | None = None) -> BusOptions:
        """Options from the environment; ``url`` and ``credential_file`` override it."""
        url = url or os.environ.get("NATS_URL") or "nats://127.0.0.1:4222"
        credential = "" if credential_file else os.environ.get(CREDENTIAL_ENV, "").strip()
        path = credential_file or (Path(p) if (p := os.environ.get(CREDENTIAL_FILE_ENV)) else None)
        if not credential and path is not None:
            try:
                credential = path.read_text().strip()
            except OSError as exc:
                raise BusCredentialError(f"cannot read the bus credential file {path}: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise BusCredentialError(f"the bus credential file {path} is not text: is it the right file?") from None
        ca = os.environ.get(CA_FILE_ENV)
        return cls(url=url, credential=credential, ca_file=Path(ca) if ca else None)

    @property
    def servers(self) -> list[str]:
        """The servers of ``url``: one, or a cluster's members comma-separated, tried in order
        (so each role can prefer a different member; the server tells of the others too)."""
        return [server.strip() for server in self.url.split(",") if server.strip()]

    def connect_kwargs(self) -> dict[str, Any]:
        """The arguments of ``nats.connect`` that carry the credential and TLS settings."""
        kwargs: dict[str, Any] = {}
        role = role_of(self.credential)
        if role is not None:
            kwargs.update(user=role, password=self.credential)
        else:
            kwargs.update(token=self.credential)
        if self.ca_file is not None or self.url.startswith("tls://"):
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            kwargs["tls"] = context
        return kwargs


async def _log_error(error: Exception) -> None:
    # Permission violations arrive here: the server refused a publish or subscription.
    log.error("NATS: %s", error)


async def connect(
    options: BusOptions,
    name: str,
    *,
    error_cb: Callable[[Exception], Awaitable[None]] | None = None,
    **kwargs: Any,
) -> NATS:
    """Connect to the bus as ``options`` says; extra ``kwargs`` go to ``nats.connect``."""
    # A restarted server is back within a second or so; nats-py's default wait of 2 s between
    # attempts would keep every follower (and so every revocation) that much longer behind.
    kwargs.setdefault("reconnect_time_wait", RECONNECT_WAIT)
    kwargs.setdefault("dont_randomize", True)
    return await nats.connect(
        options.servers, name=name, error_cb=error_cb or _log_error, **options.connect_kwargs(), **kwargs
    )
