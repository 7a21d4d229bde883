"""ops/grafana/democratic-ai.json: every metric its queries name is one the gateway, the
projections worker or the hub exports — read from their scrapes, not from a list — and every
metric they export has a panel."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import asyncpg
from nats.aio.client import Client as NATS

from support.gateway import Gateway
from support.metrics import exported_names, hub_worker, projections_worker, scrape_text

_METRIC = re.compile(r"\bdai_[a-z0-9_]+")


def _expressions(panels: list[dict]) -> Iterator[tuple[str, str]]:
    for panel in panels:
        yield from _expressions(panel.get("panels", []))  # a row's folded panels
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


async def test_the_dashboard_queries_only_exported_metrics_and_shows_them_all(
    repo_root: Path, gateway: Gateway, nats_server: object, database_url: str, pool: asyncpg.Pool, nc: NATS
) -> None:
    dashboard = json.loads((repo_root / "ops" / "grafana" / "democratic-ai.json").read_text())
    expressions = list(_expressions(dashboard["panels"]))
    assert expressions
    assert [title for title, expr in expressions if not _METRIC.search(expr)] == []  # each one checked below
    used = {name for _, expr in expressions for name in _METRIC.findall(expr)}

    exported = exported_names(await scrape_text(f"{gateway.url}/metrics", gateway.api_key))
    bus = nats_server.bus  # type: ignore[attr-defined]
    async with projections_worker(bus("projections"), database_url, pool, nc, ["registry", "usage"]) as url:
        exported |= exported_names(await scrape_text(url))
    async with hub_worker(bus("hub")) as url:
        exported |= exported_names(await scrape_text(url))

    assert sorted(used - exported) == []
    # Every family is on the dashboard (a histogram by its buckets).
    unused = {name for name in exported if not name.endswith(("_count", "_sum"))} - used
    assert sorted(unused) == []
