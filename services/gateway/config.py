"""Gateway settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from democratic_ai.contracts.bus import BusOptions
from democratic_ai.services.billing import BillingConfig
from democratic_ai.services.identity import KeyEncryptionKey
from democratic_ai.services.metering import MeteringConfig

__all__ = ["GatewayConfig"]


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    bus: BusOptions  # where NATS is, and the gateway role's credential
    database_url: str  # as the read-only app role (dai_app), never the tables' owner
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1024 * 1024  # the largest request body, and the largest WebSocket frame served
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
        if self.ws_auth_timeout <= 0:
            raise ValueError("ws_auth_timeout must be a positive number of seconds.")
        if self.ws_read_limit_bytes < self.max_body_bytes:
            raise ValueError("ws_read_limit_bytes must be at least max_body_bytes, the largest frame served.")
        if self.ws_max_in_flight < 1:
            raise ValueError("ws_max_in_flight must be at least 1.")
