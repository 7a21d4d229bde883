"""The Prometheus metrics of a projections worker (``dai projections run --metrics-port``).

    dai_projection_checkpoint{projection}               the last stream sequence committed to the read model
    dai_projection_lag{projection}                      the stream's last sequence minus the checkpoint
    dai_projection_events_applied_total{projection}     events this worker folded and committed
    dai_projection_batches_failed_total{projection}     batches that failed on an event and were applied again
    dai_projection_quarantined_events{projection}       the projection's rows in projection_dead_letters
    dai_usage_recovered_events_total                    usage events the recovery sweep published
    dai_nats_reconnects_total                           reconnects of the worker's NATS connection

The checkpoint, lag and quarantined events are read when a scrape comes — one query for the
checkpoints, one for the dead letters and one ``stream_info`` per stream, whatever the traffic —
and reused for ``max_age`` seconds, so scrapes from several Prometheus replicas cost no more.
If PostgreSQL or NATS does not answer within ``timeout``, those three are left out of that
scrape (an absent series, which an alert can see) rather than shown stale; the counters, kept
in memory, are always there.

The lag is in sequences: for a projection whose filter takes only part of its stream it counts
the other subjects' messages stored after the checkpoint too — an upper bound, and zero once the
projection has folded the stream's last message. ``dai projections status`` counts events exactly,
with a consumer per projection: too dear for every scrape.

The only label is the projection's name, a fixed set; a worker of a partitioned projection reports
the lowest checkpoint of its partitions (``dai projections status`` shows every partition's).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import asyncpg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from democratic_ai.contracts.metrics import NatsReconnects
from democratic_ai.schemas.outage import DatabaseUnreachable, on_database

from .checkpoints import read_checkpoints
from .quarantine import count_dead_letters
from .recovery import UsageRecovery
from .runner import ProjectionRunner

__all__ = ["ProjectionMetrics"]

log = logging.getLogger(__name__)

_LABELS = ["projection"]


@dataclass(frozen=True, slots=True)
class _Positions:
    """What a scrape read from PostgreSQL and NATS, per projection name."""

    checkpoints: dict[str, int] = field(default_factory=dict)
    stream_last: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)


class _Collector(Collector):
    def __init__(
        self,
        runners: Sequence[ProjectionRunner],
        recovery: UsageRecovery | None,
        positions: Callable[[], _Positions | None],
    ) -> None:
        self._runners = runners
        self._recovery = recovery
        self._positions = positions

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        positions = self._positions()
        if positions is not None:
            checkpoint = GaugeMetricFamily(
                "dai_projection_checkpoint", "The last stream sequence committed to the read model.", labels=_LABELS
            )
            lag = GaugeMetricFamily(
                "dai_projection_lag", "The stream's last sequence minus the projection's checkpoint.", labels=_LABELS
            )
            quarantined = GaugeMetricFamily(
                "dai_projection_quarantined_events",
                "The projection's events in projection_dead_letters, waiting for `dai projections retry`.",
                labels=_LABELS,
            )
            for runner in self._runners:
                name = runner.projection.name
                # A partitioned worker's: the lowest of the checkpoints it owns (its instance
                # label tells the workers apart).
                before = positions.checkpoints.get(name, 0)
                applied = min(positions.checkpoints.get(n, before) for n in runner.checkpoints.names)
                checkpoint.add_metric([name], applied)
                lag.add_metric([name], max(0, positions.stream_last[name] - applied))
                quarantined.add_metric([name], positions.quarantined.get(name, 0))
            yield from (checkpoint, lag, quarantined)
        applied = CounterMetricFamily(
            "dai_projection_events_applied", "Events this worker folded into the read model.", labels=_LABELS
        )
        failed = CounterMetricFamily(
            "dai_projection_batches_failed",
            "Batches that failed on one of their events and were applied again, quarantining it.",
            labels=_LABELS,
        )
        for runner in self._runners:
            applied.add_metric([runner.projection.name], runner.applied)
            failed.add_metric([runner.projection.name], runner.failed_batches)
        yield from (applied, failed)
        if self._recovery is not None:
            yield CounterMetricFamily(
                "dai_usage_recovered_events",
                "Usage events the recovery sweep re-derived and published (no gateway had).",
                value=self._recovery.recovered,
            )


class ProjectionMetrics:
    """The metrics of one projections worker, in a registry of their own; :meth:`render` for a scrape."""

    def __init__(
        self,
        js: JetStreamContext,
        pool: asyncpg.Pool,
        runners: Sequence[ProjectionRunner],
        recovery: UsageRecovery | None,
        reconnects: Callable[[], int],
        *,
        max_age: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self._js = js
        self._pool = pool
        self._runners = runners
        self._max_age = max_age
        self._timeout = timeout
        self._positions: _Positions | None = None
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(runners, recovery, lambda: self._positions))
        self.registry.register(NatsReconnects(reconnects, "projections worker"))

    async def render(self) -> bytes:
        """The metrics in the text exposition format, the positions read again if older than ``max_age``."""
        async with self._lock:  # concurrent scrapes share one read
            if time.monotonic() - self._read_at >= self._max_age:
                self._positions = await self._read()
                self._read_at = time.monotonic()
        return generate_latest(self.registry)

    async def _read(self) -> _Positions | None:
        try:
            return await asyncio.wait_for(self._read_positions(), self._timeout)
        except (DatabaseUnreachable, asyncpg.PostgresError, OSError, NatsError, TimeoutError) as exc:
            log.warning("metrics: projection positions left out of this scrape (%r)", exc)
            return None

    async def _read_positions(self) -> _Positions:
        with on_database():
            async with self._pool.acquire() as conn:
                checkpoints = await read_checkpoints(conn)
                quarantined = await count_dead_letters(conn)
        streams = {runner.projection.stream for runner in self._runners}
        last = {stream: (await self._js.stream_info(stream)).state.last_seq for stream in sorted(streams)}
        stream_last = {runner.projection.name: last[runner.projection.stream] for runner in self._runners}
        return _Positions(checkpoints, stream_last, quarantined)
