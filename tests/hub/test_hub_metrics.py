"""``dai hub --metrics-port``: live modules and instances, announcements by result, reconnects."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from democratic_ai.contracts import subjects

from support.metrics import Samples, hub_worker, samples, scrape_text
from support.modules import Echo
from support.waiting import eventually


def _announced(scraped: Samples, result: str) -> float:
    return scraped[("dai_hub_announcements_total", (("result", result),))]


async def test_the_hub_counts_live_instances_and_announcements(nats_server: object, nc: NATS) -> None:
    async with hub_worker(nats_server.bus("hub")) as url:  # type: ignore[attr-defined]
        before = samples(await scrape_text(url))
        assert before[("dai_nats_reconnects_total", ())] == 0
        assert {result: _announced(before, result) for result in ("registered", "unchanged", "refused")} == {
            "registered": 0,
            "unchanged": 0,
            "refused": 0,
        }
        live = before[("dai_hub_live_instances", ())]

        echo = Echo()
        await echo.start(nc)  # it announces itself (registered, or unchanged if an earlier test did) and beats
        try:

            async def counted() -> Samples | None:
                scraped = samples(await scrape_text(url))
                announced = _announced(scraped, "registered") + _announced(scraped, "unchanged")
                return scraped if announced >= 1 and scraped[("dai_hub_live_instances", ())] > live else None

            after = await eventually(counted, "the hub to count the echo module", timeout=10, interval=0.05)
            assert after[("dai_hub_live_modules", ())] >= 1
            refused = await nc.request(subjects.announce(echo.module_id), b"{not a manifest", timeout=5)
            assert refused.data.startswith(b"refused")
            assert _announced(samples(await scrape_text(url)), "refused") == 1
        finally:
            await echo.stop()
