"""Fixtures for end-to-end tests against the local control plane (hack/cluster/README-cluster.md).

The cluster is started outside pytest::

    hack/cluster/cluster.sh up
    eval "$(hack/cluster/cluster.sh env)"      # KUBECONFIG + PATH with kubectl/helm
    ZTHUMB_E2E=1 python -m pytest tests/e2e -m e2e

Without ``ZTHUMB_E2E=1`` every e2e test is skipped with a reason. With it, an
unreachable cluster is an error, never a skip: CI must not go green by
silently testing nothing.

Helpers are exposed as fixtures (``kubectl``, ``helm``, ``wait_until``,
``namespace``, ``namespace_factory``) rather than importable functions, since
several ``conftest.py`` files in the tree would clash as a module name.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from operator_harness import (
    CRD,
    OPERATOR_RBAC,
    SERVER,
    Kubectl,
    Operator,
    in_namespace,
    service_account_credentials,
)
from waiting import wait_until

E2E_ENABLED = os.environ.get("ZTHUMB_E2E") == "1"
SKIP_REASON = (
    "e2e tests need the local control plane: run `hack/cluster/cluster.sh up`, "
    '`eval "$(hack/cluster/cluster.sh env)"` and set ZTHUMB_E2E=1'
)
# Every external command is bounded; a hung kubectl must not hang CI.
COMMAND_TIMEOUT_S = 120


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if E2E_ENABLED:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


def run(
    args: list[str],
    *,
    input: str | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = COMMAND_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture text output; on failure show stdout+stderr."""
    proc = subprocess.run(
        args,
        input=input,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed (rc={proc.returncode}): {' '.join(args)}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def kubectl(
    *args: str, input: str | None = None, check: bool = True, timeout: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """``kubectl ARGS`` using KUBECONFIG from the environment."""
    return run(["kubectl", *args], input=input, check=check, timeout=timeout)


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json").stdout)


@dataclass
class Cluster:
    kubeconfig: str
    server: str
    server_version: str
    # Isolated helm home so tests neither read nor write the user's helm config.
    helm_env: dict[str, str] = field(default_factory=dict)

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return kubectl(*args, **kwargs)

    def helm(
        self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        return run(["helm", *args], check=check, env=self.helm_env, timeout=timeout)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    """The running control plane; fails loudly when ZTHUMB_E2E=1 but it is unusable."""
    if not E2E_ENABLED:  # direct use outside the e2e marker
        pytest.skip(SKIP_REASON)

    def broken(why: str) -> NoReturn:
        pytest.fail(f"ZTHUMB_E2E=1 but the local cluster is not usable: {why}. {SKIP_REASON}", pytrace=False)

    kubeconfig = os.environ.get("KUBECONFIG", "")
    if not kubeconfig or not Path(kubeconfig).is_file():
        broken(f"KUBECONFIG={kubeconfig!r} is not a file")
    for tool in ("kubectl", "helm"):
        if shutil.which(tool) is None:
            broken(f"`{tool}` is not on PATH")
    try:
        ready = kubectl("get", "--raw", "/readyz", check=False, timeout=15)
    except subprocess.TimeoutExpired:
        broken("`kubectl get --raw /readyz` timed out")
    if ready.returncode != 0 or ready.stdout.strip() != "ok":
        broken(f"/readyz said {ready.stdout.strip()!r} {ready.stderr.strip()!r}")

    version = json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    server = kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}").stdout
    helm_home = tmp_path_factory.mktemp("helm-home")
    helm_env = {
        **os.environ,
        "HELM_CACHE_HOME": str(helm_home / "cache"),
        "HELM_CONFIG_HOME": str(helm_home / "config"),
        "HELM_DATA_HOME": str(helm_home / "data"),
    }
    return Cluster(kubeconfig=kubeconfig, server=server, server_version=version, helm_env=helm_env)


@pytest.fixture(name="kubectl")
def kubectl_fixture(cluster: Cluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``kubectl(*args, input=None, check=True)`` -> CompletedProcess."""
    return cluster.kubectl


@pytest.fixture(name="helm")
def helm_fixture(cluster: Cluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    return cluster.helm


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    """``wait_until(predicate, timeout, description, interval=0.5)`` of waiting.py."""
    return wait_until


def _create_namespace(prefix: str, pod_security: str | None) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    if pod_security:
        kubectl(
            "label",
            "namespace",
            name,
            f"pod-security.kubernetes.io/enforce={pod_security}",
            "pod-security.kubernetes.io/enforce-version=latest",
        )
    # Pods are refused until the ServiceAccount controller made "default".
    wait_until(
        lambda: kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
        timeout=30,
        description=f"default ServiceAccount in {name}",
    )
    return name


@pytest.fixture
def namespace_factory(cluster: Cluster) -> Iterator[Callable[..., str]]:
    """``namespace_factory(prefix="e2e", pod_security=None)`` -> name; all deleted afterwards."""
    created: list[str] = []

    def make(prefix: str = "e2e", pod_security: str | None = None) -> str:
        name = _create_namespace(prefix, pod_security)
        created.append(name)
        return name

    yield make
    for name in created:
        # Do not wait: the namespace controller finishes it in the background.
        kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def namespace(request: pytest.FixtureRequest, namespace_factory: Callable[..., str]) -> str:
    """A fresh namespace, deleted after the test.

    Enforce a Pod Security level with indirect parametrization::

        @pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
    """
    return namespace_factory(pod_security=getattr(request, "param", None))


def crd_is_established(run: Kubectl, name: str) -> bool:
    crd = json.loads(run("get", "crd", name, "-o", "json").stdout)
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


# The operator's fixtures (operator_harness.py): the CRD once per session, and per test an operator
# in a fresh namespace.
@pytest.fixture(scope="session")
def crd(cluster: Any) -> None:
    run = cluster.kubectl
    run("apply", "-f", str(CRD))
    # Polled from the JSON, not `kubectl wait`: it fails outright on a CRD created a moment ago
    # that has no conditions at all yet.
    wait_until(
        lambda: crd_is_established(run, "lorafinetunes.zthumb.io"), 90, "the LoRAFinetune CRD Established"
    )
    wait_until(  # discovery catches up
        lambda: run("get", "lft", "-A", check=False).returncode == 0, 30, "lorafinetunes to be servable"
    )


@pytest.fixture
def setup(
    crd: None, cluster: Any, namespace: str, kubectl: Kubectl, tmp_path: Path
) -> Iterator[Callable[..., Operator]]:
    """Server + RBAC in ``namespace``; yields ``start(**env) -> Operator``."""
    ns = namespace
    for path in OPERATOR_RBAC:
        text = in_namespace(path.read_text(), ns).replace("namespace: zthumb-system", f"namespace: {ns}")
        kubectl("apply", "-f", "-", input=text)
    kubectl("create", "serviceaccount", "zthumb-operator", "-n", ns)
    kubectl("apply", "-f", "-", input=SERVER.replace("NS", ns))
    kubectl("rollout", "status", "deployment/zthumb", "-n", ns, "--timeout=60s", timeout=90)

    token, ca = service_account_credentials(kubectl, ns, "zthumb-operator", "1h")
    kubeconfig = tmp_path / "operator.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": cluster.server, "certificate-authority-data": ca}}
                ],
                "users": [{"name": "zthumb-operator", "user": {"token": token}}],
                "contexts": [
                    {"name": "c", "context": {"cluster": "c", "user": "zthumb-operator", "namespace": ns}}
                ],
                "current-context": "c",
            }
        )
    )
    base64.b64decode(ca)  # a real CA, not an empty string
    operators: list[Operator] = []

    def start(**env: str) -> Operator:
        op = Operator(ns, kubeconfig, tmp_path / "operator.log", env).start()
        operators.append(op)
        return op

    yield start
    for op in operators:
        op.stop()
    kubectl("delete", "pv", f"{ns}-data", "--wait=false", "--ignore-not-found", check=False)
