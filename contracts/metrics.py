"""What the Prometheus metrics of every process share (the gateway's, the workers').

Every process counts its NATS connection's reconnects under one name,
``dai_nats_reconnects_total``, read from the client's own statistics at scrape time; a
dashboard tells the processes apart by the scrape's ``job`` and ``instance``, not by a label
of ours.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["NatsReconnects"]


class NatsReconnects(Collector):
    """``dai_nats_reconnects_total``: how often ``process``'s NATS connection reconnected."""

    def __init__(self, reconnects: Callable[[], int], process: str) -> None:
        self._reconnects = reconnects
        self._help = f"Reconnects of the {process}'s NATS connection."

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("dai_nats_reconnects", self._help, value=self._reconnects())
