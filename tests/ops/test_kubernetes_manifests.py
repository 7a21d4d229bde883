"""ops/k8s/: every manifest is valid Kubernetes, and it starts the platform as the platform runs.

The manifests are rendered by kustomize itself (``kubectl kustomize``, from the test extra's
kubectl) and validated against the Kubernetes API's own schemas (kubernetes-validate ships them,
strict: an unknown field is an error). Then they are read with the platform's real settings:
each container's command goes through the ``dai`` parser, its environment through the loaders
that the processes run at start, its probes against a running gateway and running workers; the
NetworkPolicies by which pods they select; the runbook's commands by the Secrets they make.
"""

from __future__ import annotations

import ast
import base64
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import kubernetes_validate
import nkeys
import pytest
from nats.aio.client import Client as NATS

from democratic_ai.contracts.bus import BusOptions, role_of
from democratic_ai.ops.cli import _parser
from democratic_ai.ops.metrics_endpoint import metrics_address
from democratic_ai.projections import PROJECTIONS
from democratic_ai.services.billing import check_environment
from democratic_ai.services.gateway import body_ceiling_from_env
from democratic_ai.services.identity import KeyEncryptionKey

from support.gateway import Gateway
from support.manifests import K8S, Container, containers, kubectl, load, named, render
from support.metrics import hub_worker, projections_worker, scrape_text
from support.paths import REPO

# The oldest Kubernetes the manifests are for (the preStop sleep action is there from 1.30 on,
# on by default), and the newest whose schemas kubernetes-validate has.
KUBERNETES_VERSIONS = ("1.32.0", kubernetes_validate.utils.latest_version())
EXAMPLE_SECRETS = K8S / "examples" / "secrets.example.yaml"
# The bus role each command connects as (the users of ops/nats-accounts.conf).
ROLE_OF_COMMAND = {"gateway": "gateway", "hub": "hub", "projections": "projections", "bus-auth": "busauth"}
METRICS_ENV = {"hub": "DAI_HUB_METRICS_PORT", "projections": "DAI_PROJECTIONS_METRICS_PORT"}


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return render(K8S / "production")


@pytest.fixture(scope="module")
def secrets() -> dict[str, dict[str, Any]]:
    return named(load(EXAMPLE_SECRETS), "Secret")


@pytest.fixture(scope="module")
def config_maps(production: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return named(production, "ConfigMap")


def _args(container: Container) -> Any:
    argv = container.argv
    assert argv[0] == "dai", f"{container.name} runs {argv[0]!r}, not the dai command"
    try:
        return _parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{container.name}: dai refuses the arguments {argv[1:]}")


def _command(container: Container) -> str:
    return _args(container).command


def test_every_manifest_is_valid_kubernetes(production: list[dict[str, Any]]) -> None:
    documents = [*production, *render(K8S / "base"), *load(EXAMPLE_SECRETS)]
    kinds = {doc["kind"] for doc in production}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"} <= kinds
    for version in KUBERNETES_VERSIONS:
        for doc in documents:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {exc.message}")


def test_the_validation_refuses_a_manifest_kubernetes_would_refuse(production: list[dict[str, Any]]) -> None:
    gateway = copy.deepcopy(named(production, "Deployment")["dai-gateway"])
    gateway["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, KUBERNETES_VERSIONS[-1], strict=True)
    gateway = copy.deepcopy(named(production, "Deployment")["dai-gateway"])
    gateway["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_secrets_are_an_example_that_nothing_deploys(production: list[dict[str, Any]]) -> None:
    assert [doc["metadata"]["name"] for doc in production if doc["kind"] == "Secret"] == []
    for secret in load(EXAMPLE_SECRETS):
        assert all("EXAMPLE-ONLY" in value for value in secret["stringData"].values()), secret["metadata"]["name"]


def test_every_container_runs_a_command_dai_accepts(production: list[dict[str, Any]]) -> None:
    commands = sorted(_command(container) for container in containers(production))
    # The platform's processes: the gateway, the hub, the auth callout, a worker per projection, a module.
    assert commands == sorted(["gateway", "hub", "bus-auth", "module", *["projections"] * len(PROJECTIONS)])
    for container in containers(production):
        assert container.spec["image"].startswith("registry.example.com/democratic-ai:"), container.name


def test_each_projection_runs_in_exactly_one_worker_of_one_replica(production: list[dict[str, Any]]) -> None:
    workers = [c for c in containers(production) if _command(c) == "projections"]
    names = sorted(name for worker in workers for name in _args(worker).names)
    assert names == sorted(PROJECTIONS)  # each once, none forgotten: no worker runs "all"
    for worker in workers:
        assert len(_args(worker).names) == 1, worker.name
        # A second replica would take the projection's consumer from under the first.
        assert worker.workload["spec"]["replicas"] == 1, worker.name
        assert worker.workload["spec"]["strategy"]["type"] == "Recreate", worker.name


def test_every_variable_the_manifests_set_is_one_the_platform_reads(
    production: list[dict[str, Any]],
    config_maps: dict[str, dict[str, Any]],
    secrets: dict[str, dict[str, Any]],
) -> None:
    documented = _configuration_table()
    read = _string_literals()
    for container in containers(production):
        for name in container.environment(config_maps, secrets):
            assert name in documented, f"{container.name} sets {name}, which README's Configuration does not name"
            assert name in read, f"{container.name} sets {name}, which no module of the platform names"


def test_the_settings_pass_the_platform_s_own_checks(
    production: list[dict[str, Any]],
    config_maps: dict[str, dict[str, Any]],
    secrets: dict[str, dict[str, Any]],
    tmp_path: Path,
) -> None:
    for container in containers(production):
        env = container.environment(config_maps, secrets)
        files = container.secret_files()
        args, command = _args(container), _command(container)
        paths = [value for name, value in env.items() if name.endswith("_FILE")]
        if command == "module":
            paths.append(str(args.credential_file))
        for path in paths:
            assert path in files, f"{container.name}: {path} is no file of its Secret volumes ({sorted(files)})"

        def read(path: str, container: Container = container) -> Path:
            return _pod_file(container, path, secrets, tmp_path)

        credential = args.credential_file if command == "module" else env["DAI_BUS_CREDENTIAL_FILE"]
        bus = BusOptions.from_env(env["NATS_URL"], read(str(credential)))
        assert role_of(bus.credential) == ROLE_OF_COMMAND.get(command), f"{container.name} mounts another's credential"
        if command == "bus-auth":
            system = BusOptions.from_env(env["NATS_URL"], read(env["DAI_BUS_SYS_CREDENTIAL_FILE"]))
            assert role_of(system.credential) == "sys"
            assert files[env["DAI_BUS_ISSUER_SEED_FILE"]] == ("dai-bus", "issuer-seed")
        if command == "gateway":
            check_environment(env)  # the billing settings and the plan catalogue, as `dai gateway` checks them
            body_ceiling_from_env(env)
            assert files[env["DAI_KEK_FILE"]] == ("dai-kek", "kek")
            assert env["DATABASE_APP_URL"].startswith("postgresql://dai_app:")  # the gateway refuses the owner
            assert args.host == "0.0.0.0" and args.port == container.port("http")
        if command in ("hub", "projections"):
            address = metrics_address(args.metrics_port, args.metrics_host, METRICS_ENV[command])
            assert address is not None, f"{container.name} serves no metrics"
            # The default, 127.0.0.1, is out of Prometheus's reach.
            assert address.host == "0.0.0.0" and address.port == container.port("metrics"), container.name
        if command == "projections":
            assert env["DATABASE_URL"] == secrets["dai-database"]["stringData"]["DATABASE_URL"]


def test_the_gateway_is_served_scaled_and_kept_available(production: list[dict[str, Any]]) -> None:
    deployments, services = named(production, "Deployment"), named(production, "Service")
    gateway = deployments["dai-gateway"]
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    service = services["dai-gateway"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    autoscaler = named(production, "HorizontalPodAutoscaler")["dai-gateway"]
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "dai-gateway"}
    assert autoscaler["spec"]["scaleTargetRef"] == target
    assert autoscaler["spec"]["minReplicas"] >= 2
    # Every budget selects the pods of one workload, and the workloads of more than one replica have one.
    budgets = named(production, "PodDisruptionBudget")
    for budget in budgets.values():
        selected = [
            name
            for name, workload in deployments.items()
            if budget["spec"]["selector"]["matchLabels"].items()
            <= workload["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, (budget["metadata"]["name"], selected)
    several = {name for name, workload in deployments.items() if workload["spec"]["replicas"] > 1}
    assert several <= set(budgets)
    for container in containers(production):
        requests = container.spec["resources"]["requests"]
        assert {"cpu", "memory"} <= set(requests), container.name


async def test_the_gateway_probes_ask_its_real_routes(production: list[dict[str, Any]], gateway: Gateway) -> None:

    (container,) = [c for c in containers(production) if _command(c) == "gateway"]
    probes = {kind: container.spec[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    paths = {kind: probe["httpGet"]["path"] for kind, probe in probes.items()}
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    assert {probe["httpGet"]["port"] for probe in probes.values()} == {"http"}
    async with aiohttp.ClientSession() as session:
        for path in set(paths.values()):
            # A kubelet sends no credential.
            async with session.get(gateway.url + path) as response:
                assert response.status == 200, (path, await response.text())


async def test_the_workers_probes_ask_their_metrics_endpoints(
    production: list[dict[str, Any]], nats_server: object, database_url: str, pool: asyncpg.Pool, nc: NATS
) -> None:
    workers = [c for c in containers(production) if _command(c) in ("hub", "projections")]
    probed = {_command(c): c.spec["readinessProbe"]["httpGet"] for c in workers}
    for worker in workers:
        assert worker.spec["readinessProbe"]["httpGet"] == probed[_command(worker)], worker.name
        assert worker.spec["readinessProbe"]["httpGet"]["port"] == "metrics", worker.name
        if _command(worker) == "hub":
            assert worker.spec["livenessProbe"]["tcpSocket"]["port"] == "metrics", worker.name
        else:  # a projections worker waiting for PostgreSQL has its metrics port closed, and must live
            assert "livenessProbe" not in worker.spec, worker.name
    bus = nats_server.bus  # type: ignore[attr-defined]
    async with projections_worker(bus("projections"), database_url, pool, nc, ["registry"]) as url:
        await scrape_text(url.removesuffix("/metrics") + probed["projections"]["path"])
    async with hub_worker(bus("hub")) as url:
        await scrape_text(url.removesuffix("/metrics") + probed["hub"]["path"])


def _pod_file(container: Container, path: str, secrets: dict[str, dict[str, Any]], tmp_path: Path) -> Path:
    """The file a Secret volume puts at ``path`` in the container, written under ``tmp_path`` from the example."""
    secret, key = container.secret_files()[path]
    local = tmp_path / container.name.replace("/", "-") / Path(path).name
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(secrets[secret]["stringData"][key])
    return local


def _configuration_table() -> set[str]:
    """The variables README's "Configuration" table names (its first column)."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            names.update(part.strip(" `") for part in first.split(","))
    assert "NATS_URL" in names  # the table was found
    return names


def _string_literals() -> set[str]:
    """Every string constant in the platform's modules (names the code reads from the environment among them)."""

    found = set()
    for folder in ("contracts", "hub", "projections", "schemas", "sdk", "services", "ops"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    found.add(node.value)
    return found


def test_only_prometheus_reaches_the_workers_metrics_and_nothing_the_silent_pods(
    production: list[dict[str, Any]],
) -> None:
    policies = named(production, "NetworkPolicy").values()
    for container in containers(production):
        labels = container.workload["spec"]["template"]["metadata"]["labels"]
        selecting = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
        if _command(container) == "gateway":
            assert selecting == [], "the gateway is the edge: its Service must stay reachable"
            continue
        assert len(selecting) == 1, (container.name, [p["metadata"]["name"] for p in selecting])
        (policy,) = selecting
        allowed = [port["port"] for rule in policy["spec"].get("ingress", []) for port in rule["ports"]]
        assert allowed == [name for name in ("metrics",) if name in _port_names(container)], container.name
        for rule in policy["spec"].get("ingress", []):
            assert all("namespaceSelector" in peer or "podSelector" in peer for peer in rule["from"]), container.name


def _port_names(container: Container) -> list[str]:
    return [port["name"] for port in container.spec.get("ports", [])]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and the In, NotIn, Exists, DoesNotExist expressions) matches."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        matched = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not matched:
            return False
    return True


def test_the_runbook_makes_the_secrets_the_manifests_read(secrets: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """The runbook's commands, run with kubectl's client-side dry run, print the Secrets the
    example shows, filled with working credentials."""
    runbook = (REPO / "ops" / "RUNBOOK.md").read_text()
    block = next(b for b in runbook.split("```sh\n")[1:] if "mkdir -m 700 dai-secrets" in b).split("```")[0]
    script = block.replace("--namespace democratic-ai", "--namespace democratic-ai --dry-run=client -o json")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = {**os.environ, "PATH": f"{kubectl().parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    made, decoder, text = {}, json.JSONDecoder(), done.stdout.strip()
    while text:
        doc, end = decoder.raw_decode(text)
        made[doc["metadata"]["name"]] = {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}
        text = text[end:].strip()
    assert set(made) == {"dai-bus", "dai-kek"}
    for name, data in made.items():
        assert set(data) == set(secrets[name]["stringData"]), name
        assert all(value == value.strip() and value for value in data.values()), name
    bus = made["dai-bus"]
    for key in ("gateway", "hub", "projections", "busauth", "operator", "sys"):
        assert role_of(bus[key]) == key
    assert nkeys.from_seed(bytearray(bus["issuer-seed"].encode())).public_key.decode() == bus["issuer"]
    KeyEncryptionKey.from_text(made["dai-kek"]["kek"])
