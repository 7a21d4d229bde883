"""The Prometheus metrics of the hub (``dai hub --metrics-port``), read at scrape time.

    dai_hub_live_modules                        modules with at least one live instance
    dai_hub_live_instances                      module instances whose heartbeats are current
    dai_hub_announcements_total{result}         announcements handled: registered, unchanged, refused
    dai_nats_reconnects_total                   reconnects of the hub's NATS connection

No module id is a label: modules come and go, and each would add series of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from democratic_ai.contracts.metrics import NatsReconnects

from .service import Hub

__all__ = ["HubMetrics"]


class _Collector(Collector):
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        instances = self._hub.presence.instances()
        yield GaugeMetricFamily(
            "dai_hub_live_modules",
            "Modules with at least one live instance.",
            value=len({beat.module_id for beat in instances}),
        )
        yield GaugeMetricFamily(
            "dai_hub_live_instances", "Module instances whose heartbeats are current.", value=len(instances)
        )
        announcements = CounterMetricFamily(
            "dai_hub_announcements", "Module announcements the hub handled, by result.", labels=["result"]
        )
        for result, count in self._hub.announcements.items():
            announcements.add_metric([result], count)
        yield announcements


class HubMetrics:
    """The hub's metrics, in a registry of their own; :meth:`render` for a scrape."""

    def __init__(self, hub: Hub, reconnects: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(hub))
        self.registry.register(NatsReconnects(reconnects, "hub"))

    async def render(self) -> bytes:
        return generate_latest(self.registry)
