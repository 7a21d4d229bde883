"""Gateway settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from democratic_ai.contracts.bus import BusOptions
from democratic_ai.services.billing import BillingConfig
from democratic_ai.services.identity import KeyEncryptionKey
from democratic_ai.services.metering import MeteringConfig

__all__ = ["BODY_CEILING_ENV", "GatewayConfig", "body_ceiling_from_env"]

BODY_CEILING_ENV = "DAI_MAX_BODY_BYTES"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    bus: BusOptions  # where NATS is, and the gateway role's credential
    database_url: str  # as the read-only app role (dai_app), never the tables' owner
    host: str = "127.0.0.1"
    port: int = 8080
    # The largest request body, and the largest input of a capability that declares none.
    max_body_bytes: int = 1024 * 1024
    # The most a capability's declared max_input_bytes can raise its body limit to (HTTP body or
    # WebSocket payload). None: as much as the NATS server carries (its max_payload less room for
    # the call's envelope); a larger value is lowered to that when the gateway connects.
    body_ceiling_bytes: int | None = None
    billing: BillingConfig = field(default_factory=BillingConfig)
    ws_auth_timeout: float = 10.0  # seconds a WebSocket without a key in its headers has to send AUTH
    ws_max_in_flight: int = 64  # calls one WebSocket may have running at once
    # The largest WebSocket frame read at all. A frame above max_body_bytes but within this gets
    # an ERROR and the socket lives on; one above it closes the socket with 1009, since reading
    # it means holding it in memory.
    ws_read_limit_bytes: int = 16 * 1024 * 1024
    metering: MeteringConfig = field(default_factory=MeteringConfig)  # plans, usage publishing, leases
    # Opens the JWT signing keys and the per-user data keys; None: load_kek() from the
    # environment (DAI_KEK_FILE or DAI_KEK) when the app starts.
    kek: KeyEncryptionKey | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}.")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024.")
        if self.body_ceiling_bytes is not None and self.body_ceiling_bytes < 1024:
            raise ValueError("body_ceiling_bytes must be at least 1024.")
        if self.ws_auth_timeout <= 0:
            raise ValueError("ws_auth_timeout must be a positive number of seconds.")
        if self.ws_read_limit_bytes < self.max_body_bytes:
            raise ValueError("ws_read_limit_bytes must be at least max_body_bytes, the largest frame served.")
        if self.ws_max_in_flight < 1:
            raise ValueError("ws_max_in_flight must be at least 1.")


def body_ceiling_from_env(environ: Mapping[str, str] = os.environ) -> int | None:
    """``DAI_MAX_BODY_BYTES`` as a number of bytes (``None`` when unset); ``ValueError`` saying
    what is wrong otherwise."""
    raw = environ.get(BODY_CEILING_ENV, "").strip()
    if not raw:
        return None
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1024:
        raise ValueError(f"{BODY_CEILING_ENV} must be a whole number of bytes, at least 1024 (not {raw!r})")
    return value
