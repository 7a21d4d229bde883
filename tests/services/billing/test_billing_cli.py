"""What ``dai billing close-period`` runs, against the test servers: its errors are sentences
for the operator, not tracebacks."""

from __future__ import annotations

import pytest

from democratic_ai.ops.cli import _parser
from democratic_ai.ops.nats_server import NatsServer
from democratic_ai.ops.services import close_billing_periods

from support.names import unique


def test_the_command_line() -> None:
    args = _parser().parse_args(["billing", "close-period", "--tenant", "acme", "--period", "2025-01"])
    assert (args.command, args.billing_command, args.tenant, args.period) == (
        "billing",
        "close-period",
        "acme",
        "2025-01",
    )
    args = _parser().parse_args(["billing", "close-period"])
    assert (args.tenant, args.period) == (None, None)


async def test_close_period_explains_what_is_wrong(
    nats_server: NatsServer, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    tenant = unique("nobody")
    with pytest.raises(SystemExit, match=f"tenant '{tenant}' has never subscribed"):
        await close_billing_periods(nats_server.bus(), database_url, tenant, "2025-01")
    with pytest.raises(SystemExit, match="'2025-13' is not a month"):
        await close_billing_periods(nats_server.bus(), database_url, tenant, "2025-13")
