"""ops/k8s/nats/values.yaml, the values of the NATS project's Helm chart: a three-node JetStream
cluster whose configuration is the platform's.

Helm is not here to render the chart, so what the chart does with the values is done the way its
values.yaml documents it (``config.merge`` becomes the server's configuration, strings between
``<<`` and ``>>`` unquoted, a key ending in ``$include`` an include directive) and handed to a
real nats-server, with the accounts file exactly as the runbook's ConfigMap carries it. The
cluster block is left out there: a cluster needs its peers. The chart's own keys are checked
against the chart's values.yaml when ``DAI_NATS_CHART_VALUES`` names a copy of it (this
repository vendors none of the chart).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from democratic_ai.contracts.bus import connect
from democratic_ai.contracts.streams import ensure_streams
from democratic_ai.ops.credentials import ROLES, PlatformCredentials
from democratic_ai.ops.nats_server import NatsServer

from support.manifests import K8S, containers, kubectl, load, named, render
from support.paths import REPO

VALUES = K8S / "nats" / "values.yaml"
CHART_CONFIG = "/etc/nats-config/nats.conf"  # where the chart puts the server's configuration


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


def test_the_values_make_a_three_node_jetstream_cluster_that_syncs_every_write(values: dict[str, Any]) -> None:
    config = values["config"]
    assert config["cluster"] == {"enabled": True, "replicas": 3}
    jetstream = config["jetstream"]
    assert jetstream["enabled"] is True
    assert jetstream["fileStore"]["enabled"] is True and jetstream["fileStore"]["pvc"]["enabled"] is True
    assert jetstream["merge"] == {"sync_interval": "always"}
    assert values["podDisruptionBudget"]["enabled"] is True


def test_the_server_gets_every_variable_the_accounts_file_reads_from_the_processes_secret(
    values: dict[str, Any], tmp_path: Path
) -> None:
    env = values["container"]["env"]
    assert set(env) == set(PlatformCredentials.ensure(tmp_path).server_environment())
    secrets = named(load(K8S / "examples" / "secrets.example.yaml"), "Secret")
    for name, source in env.items():
        ref = source["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]["stringData"], name
    # A role's password is the very credential its process mounts.
    mounted = {}
    for container in containers(render(K8S / "production")):
        for path, secret_key in container.secret_files().items():
            if path.endswith("/credential") and secret_key[0] == "dai-bus":
                mounted[secret_key[1]] = container.name
    for role in ROLES:
        ref = env[f"DAI_BUS_{role.upper()}"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "dai-bus"
        assert ref["key"] == role
    assert set(mounted) == {"gateway", "hub", "projections", "busauth"}, mounted


def test_the_include_reaches_the_accounts_file_of_the_runbook_s_config_map(values: dict[str, Any]) -> None:
    include = values["config"]["merge"]["$include"]
    (mount,) = [p["value"] for p in values["container"]["patch"] if p["value"]["name"] == "dai-nats-accounts"]
    (volume,) = [p["value"] for p in values["podTemplate"]["patch"] if p["value"]["name"] == "dai-nats-accounts"]
    assert all(p["op"] == "add" for p in (*values["container"]["patch"], *values["podTemplate"]["patch"]))
    config_map = _runbook_config_map()
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    path = posixpath.normpath(posixpath.join(posixpath.dirname(CHART_CONFIG), include))
    directory, key = posixpath.split(path)
    assert directory == mount["mountPath"]
    assert config_map["data"][key] == (REPO / "ops" / "nats-accounts.conf").read_text()


async def test_a_nats_server_runs_the_configuration_the_values_make(values: dict[str, Any], tmp_path: Path) -> None:
    include = values["config"]["merge"]["$include"]
    config = tmp_path / "etc" / "nats-config" / "nats.conf"
    accounts = Path(posixpath.normpath(config.parent / include))
    accounts.parent.mkdir(parents=True)
    config.parent.mkdir(parents=True)
    accounts.write_text(_runbook_config_map()["data"][accounts.name])
    config.write_text(_chart_config(values))
    with NatsServer(tmp_path / "data", port=0, config=config) as server:
        for role in ("gateway", "hub", "projections", "busauth", "operator"):
            nc = await connect(server.bus(role), f"values-{role}")
            await nc.close()
        nc = await connect(server.bus("operator"), "values-operator")
        try:
            await ensure_streams(nc.jetstream())
        finally:
            await nc.close()
        async with aiohttp.ClientSession() as session, session.get(f"{server.monitor_url}/varz") as response:
            varz = await response.json()
    assert varz["max_payload"] == 8 * 1024 * 1024
    assert varz["ping_max"] == 3
    assert varz["jetstream"]["config"]["sync_always"] is True
    assert varz["jetstream"]["config"]["max_memory"] == 256 * 1024 * 1024


def test_the_values_set_only_keys_the_chart_has(values: dict[str, Any]) -> None:
    chart_values = os.environ.get("DAI_NATS_CHART_VALUES")
    if not chart_values:
        pytest.skip("set DAI_NATS_CHART_VALUES to the chart's values.yaml (nats-io/k8s helm/charts/nats) to check")
    chart = yaml.safe_load(Path(chart_values).read_text())
    assert sorted(_unknown_keys(values, chart)) == []


def _unknown_keys(ours: dict[str, Any], chart: dict[str, Any], where: str = "") -> list[str]:
    """Paths of ``ours`` the chart has no key for. Below a free-form map of the chart (``merge``,
    ``env``, an empty map such as ``topologySpreadConstraints``) any key is the user's own."""
    unknown = []
    for key, value in ours.items():
        path = f"{where}.{key}" if where else key
        if key not in chart:
            unknown.append(path)
        elif isinstance(value, dict) and isinstance(chart[key], dict) and chart[key] and key not in ("merge", "env"):
            unknown += _unknown_keys(value, chart[key], path)
    return unknown


def _runbook_config_map() -> dict[str, Any]:
    """The ConfigMap the runbook's command makes (run by kubectl, on the client: no cluster needed)."""
    found = re.search(r"^\s*(kubectl create configmap dai-nats-accounts [^\n]*)$", _runbook(), flags=re.MULTILINE)
    assert found, "ops/RUNBOOK.md has no `kubectl create configmap dai-nats-accounts` command"
    argv = [str(kubectl()), *found.group(1).split()[1:], "--dry-run=client", "-o", "json"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _runbook() -> str:
    return (REPO / "ops" / "RUNBOOK.md").read_text()


def _chart_config(values: dict[str, Any]) -> str:
    """The server configuration the chart makes of the values, less the parts the embedded server's
    command line sets (the store directory, the ports) and the cluster block."""
    jetstream = values["config"]["jetstream"]
    block: dict[str, Any] = {"max_file_store": f"<< {jetstream['fileStore']['pvc']['size']} >>"}
    if jetstream["memoryStore"]["enabled"]:
        block["max_memory_store"] = f"<< {jetstream['memoryStore']['maxSize']} >>"
    block.update(jetstream["merge"])
    merged = {**values["config"]["merge"], "jetstream": block}
    lines = []
    for key, value in sorted(merged.items()):
        if key.endswith("$include"):
            lines.append(f"include {value};")
        else:
            lines.append(f"{json.dumps(key)}: {_unquote(json.dumps(value))}")
    return "\n".join(lines) + "\n"


def _unquote(text: str) -> str:
    return re.sub(r'"<<\s*(.*?)\s*>>"', r"\1", text)
