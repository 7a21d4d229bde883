"""Gateway settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from democratic_ai.services.metering import MeteringConfig

__all__ = ["GatewayConfig"]


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    nats_url: str
    database_url: str  # as the read-only app role (dai_app), never the tables' owner
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1024 * 1024
    metering: MeteringConfig = field(default_factory=MeteringConfig)  # plans, usage publishing, leases

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}.")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024.")
