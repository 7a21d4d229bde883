"""``GET /metrics``: the gateway's Prometheus metrics, in the text exposition format.

    dai_calls_total{capability, transport, outcome}        calls that ended (the outcome rule's five)
    dai_call_duration_seconds{capability, transport}       from admission to the message that ended it
    dai_calls_in_flight{transport}                         admitted and not yet ended
    dai_rate_limit_refusals_total{policy}                  calls the limits refused, by refusing policy
    dai_follower_position{follower}                        the last stream sequence each in-memory view applied
    dai_nats_reconnects_total                              reconnects of the gateway's NATS connection

The call gate (:mod:`.gate`) is the one place that counts, so every transport counts alike.
Label values are bounded: ``capability`` is a registered capability's name or ``unregistered``
(a caller cannot grow the series by calling names nobody serves), ``transport`` the gate's
callers, ``outcome`` and ``policy`` fixed sets; no tenant, key or call id is a label.

Scraping needs the permission ``metrics:read`` (a super admin's, or a key scoped to it:
Prometheus sends it as ``Authorization: Bearer``): call counts by capability are the
platform's business, not every tenant's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from democratic_ai.contracts import MCPMessage
from democratic_ai.contracts.metrics import NatsReconnects
from democratic_ai.contracts.usage_events import Outcome

__all__ = ["METRICS_PERMISSION", "GatewayMetrics"]

METRICS_PERMISSION = "metrics:read"
UNREGISTERED = "unregistered"
# From a no-op call on one machine (~1 ms) to the longest ttl (300 s).
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _Followers(Collector):
    """The follower positions, read at scrape time."""

    def __init__(self, positions: Callable[[], Mapping[str, int]]) -> None:
        self._positions = positions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        followers = GaugeMetricFamily(
            "dai_follower_position",
            "The last stream sequence each in-memory view of the gateway applied.",
            labels=["follower"],
        )
        for name, sequence in sorted(self._positions().items()):
            followers.add_metric([name], sequence)
        yield followers


class GatewayMetrics:
    """The metrics of one gateway process, in a registry of their own (several gateways may
    share a process, as in tests)."""

    def __init__(
        self,
        is_registered: Callable[[str], bool],
        positions: Callable[[], Mapping[str, int]],
        reconnects: Callable[[], int],
    ) -> None:
        self._is_registered = is_registered
        self.registry = CollectorRegistry(auto_describe=True)
        self._calls = Counter(
            "dai_calls",
            "Calls that ended, by capability, transport and outcome.",
            ["capability", "transport", "outcome"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "dai_call_duration_seconds",
            "Seconds from a call's admission to the message that ended it.",
            ["capability", "transport"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._in_flight = Gauge(
            "dai_calls_in_flight", "Calls admitted and not yet ended.", ["transport"], registry=self.registry
        )
        self._refusals = Counter(
            "dai_rate_limit_refusals",
            "Calls the rate limits refused, by refusing policy.",
            ["policy"],
            registry=self.registry,
        )
        self.registry.register(_Followers(positions))
        self.registry.register(NatsReconnects(reconnects, "gateway"))
        # The labelled children, found once: ``labels()`` takes a lock and builds a key each time.
        self._ended: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._flight: dict[str, Any] = {}

    def started(self, transport: str) -> float:
        """Count a call admitted now; the value to hand to :meth:`ended`."""
        self._in_flight_of(transport).inc()
        return time.monotonic()

    def ended(self, answer: MCPMessage, outcome: str, transport: str, started: float) -> None:
        """Count the call ``answer`` ended with ``outcome`` (as metered), admitted at ``started``."""
        capability = answer.action if self._is_registered(answer.action) else UNREGISTERED
        key = (capability, transport, outcome)
        children = self._ended.get(key)
        if children is None:
            children = self._ended[key] = (self._calls.labels(*key), self._duration.labels(capability, transport))
        self._in_flight_of(transport).dec()
        children[0].inc()
        children[1].observe(time.monotonic() - started)

    def _in_flight_of(self, transport: str) -> Any:
        gauge = self._flight.get(transport)
        if gauge is None:
            gauge = self._flight[transport] = self._in_flight.labels(transport)
        return gauge

    def refused(self, answer: MCPMessage, transport: str, policy: str) -> None:
        """Count a call the limits refused: it ended at once, ``rate_limited``."""
        self._refusals.labels(policy).inc()
        self.ended(answer, Outcome.RATE_LIMITED, transport, self.started(transport))

    def render(self) -> bytes:
        return generate_latest(self.registry)
