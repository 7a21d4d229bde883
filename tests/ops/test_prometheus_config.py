"""ops/prometheus/: the scrape configuration finds the processes the Kubernetes manifests run, and
every alert rule asks for metrics the processes really export — read from their scrapes, not from
a list. ``promtool``, when it is on the PATH, checks the rules as Prometheus would load them."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import asyncpg
import pytest
import yaml
from nats.aio.client import Client as NATS

from democratic_ai.contracts.usage_events import Outcome

from support.gateway import Gateway
from support.manifests import K8S, containers, named, render
from support.metrics import exported_names, hub_worker, projections_worker, scrape_text
from support.paths import REPO

PROMETHEUS = REPO / "ops" / "prometheus"
_METRIC = re.compile(r"\bdai_[a-z0-9_]+")


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    assert groups
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def scrape() -> dict[str, Any]:
    return yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())


def test_every_rule_is_an_alert_with_a_severity_and_a_summary(rules: list[dict[str, Any]]) -> None:
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]


def test_the_rules_watch_what_the_issue_asks_for(rules: list[dict[str, Any]]) -> None:
    watched = {name for rule in rules for name in _METRIC.findall(rule["expr"])}
    assert {
        "dai_projection_lag",
        "dai_projection_quarantined_events",
        "dai_calls_total",
        "dai_nats_reconnects_total",
    } <= watched


def test_the_call_outcomes_the_rules_name_are_outcomes(rules: list[dict[str, Any]]) -> None:
    named_outcomes = set()
    for rule in rules:
        for alternatives in re.findall(r'outcome=~?"([^"]+)"', rule["expr"]):
            named_outcomes |= set(alternatives.split("|"))
    assert named_outcomes
    assert named_outcomes <= {outcome.value for outcome in Outcome}


async def test_the_rules_ask_only_for_exported_metrics(
    rules: list[dict[str, Any]], gateway: Gateway, nats_server: object, database_url: str, pool: asyncpg.Pool, nc: NATS
) -> None:
    # Every rule but the targets' `up` names a metric of the platform.
    assert [rule["alert"] for rule in rules if not _METRIC.search(rule["expr"])] == ["DaiTargetDown"]
    used = {name for rule in rules for name in _METRIC.findall(rule["expr"])}
    exported = exported_names(await scrape_text(f"{gateway.url}/metrics", gateway.api_key))
    bus = nats_server.bus  # type: ignore[attr-defined]
    async with projections_worker(bus("projections"), database_url, pool, nc, ["registry"]) as url:
        exported |= exported_names(await scrape_text(url))
    async with hub_worker(bus("hub")) as url:
        exported |= exported_names(await scrape_text(url))
    assert sorted(used - exported) == []


def test_the_scrape_jobs_find_the_manifests_processes(scrape: dict[str, Any], rules: list[dict[str, Any]]) -> None:
    production = render(K8S / "production")
    (namespace,) = named(production, "Namespace")
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert set(jobs) == {"dai-gateway", "dai-hub", "dai-projections"}
    for job in jobs.values():
        (discovery,) = job["kubernetes_sd_configs"]
        assert discovery["namespaces"]["names"] == [namespace], job["job_name"]
    # The gateway: through its Service's endpoints, with the bearer token /metrics asks for.
    gateway = jobs["dai-gateway"]
    service = named(production, "Service")["dai-gateway"]
    keep = _kept(gateway)
    assert keep["__meta_kubernetes_service_name"] == service["metadata"]["name"]
    assert keep["__meta_kubernetes_endpoint_port_name"] == service["spec"]["ports"][0]["name"]
    assert gateway.get("metrics_path", "/metrics") == "/metrics"
    assert gateway["authorization"]["type"] == "Bearer" and gateway["authorization"]["credentials_file"]
    # The workers: their pods, by component label, on the port named metrics.
    for job, command in (("dai-hub", "hub"), ("dai-projections", "projections")):
        keep = _kept(jobs[job])
        pods = [c for c in containers(production) if c.argv[1] == command]
        assert pods, command
        for pod in pods:
            labels = pod.workload["spec"]["template"]["metadata"]["labels"]
            assert (
                labels["app.kubernetes.io/component"] == keep["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
            )
            assert pod.port(keep["__meta_kubernetes_pod_container_port_name"])
    # The rules load with the configuration, and the target alert names these jobs.
    assert scrape["rule_files"] == ["alerts.yml"]
    (down,) = [rule for rule in rules if rule["alert"] == "DaiTargetDown"]
    found = re.search(r'job=~"([^"]+)"', down["expr"])
    assert found and found.group(1).split("|") == sorted(jobs)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) is not on the PATH")
def test_promtool_accepts_the_rules() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", str(PROMETHEUS / "alerts.yml")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _kept(job: dict[str, Any]) -> dict[str, str]:
    """Source label → regex of the job's ``keep`` relabellings."""
    kept = {}
    for step in job["relabel_configs"]:
        if step.get("action") == "keep":
            (label,) = step["source_labels"]
            kept[label] = step["regex"]
    return kept
