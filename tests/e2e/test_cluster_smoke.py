"""Smoke tests of the local control plane itself (hack/cluster/cluster.sh).

They prove the pieces later e2e tests lean on: GPU scheduling onto the kwok
nodes, Job completion, unschedulable GPU requests, Helm against a semver
server version, RBAC + ServiceAccount tokens, and Pod Security admission.
"""

from __future__ import annotations

import base64
import json
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

GPU_RESOURCE = "nvidia.com/gpu"

# Passes Pod Security "restricted", so the same pod spec works in any namespace.
RESTRICTED_CONTAINER_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def gpu_job(name: str, gpus: int) -> str:
    """A one-pod Job asking for ``gpus`` GPUs and tolerating the GPU taint."""
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "train",
                            # kwok never pulls or runs images; any name works.
                            "image": "registry.invalid/zthumb/trainer:test",
                            "resources": {
                                "requests": {"cpu": "1", "memory": "1Gi"},
                                "limits": {GPU_RESOURCE: str(gpus), "memory": "1Gi"},
                            },
                            "securityContext": RESTRICTED_CONTAINER_SECURITY,
                        }
                    ],
                }
            },
        },
    }
    return json.dumps(job)


def job_pods(kubectl: Callable[..., subprocess.CompletedProcess[str]], ns: str, job: str) -> list[Any]:
    out = kubectl("get", "pods", "-n", ns, "-l", f"batch.kubernetes.io/job-name={job}", "-o", "json").stdout
    return json.loads(out)["items"]


def test_server_version_is_semver(cluster: Any) -> None:
    # Helm's kubeVersion constraints compare against this; the unstamped
    # default "v0.0.0-master+$Format:%H$" would break every chart.
    assert cluster.server_version == "v1.36.3"


def test_fake_gpu_nodes_are_ready(kubectl: Callable[..., Any]) -> None:
    # type=kwok: the real node (zthumb-real-0) is in the gpu pool too.
    out = kubectl("get", "nodes", "-l", "zthumb.io/pool=gpu,type=kwok", "-o", "json").stdout
    nodes = json.loads(out)["items"]
    assert len(nodes) == 2
    for node in nodes:
        assert node["status"]["allocatable"][GPU_RESOURCE] == "8"
        assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
        assert {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"} in node["spec"]["taints"]
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_gpu_job_runs_on_gpu_node_and_completes(
    namespace: str, kubectl: Callable[..., Any], wait_until: Callable[..., Any]
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=gpu_job("one-gpu", 1))
    kubectl("wait", "-n", namespace, "--for=condition=Complete", "job/one-gpu", "--timeout=90s", timeout=120)

    pods = job_pods(kubectl, namespace, "one-gpu")
    assert len(pods) == 1
    pod = pods[0]
    assert pod["status"]["phase"] == "Succeeded"
    node = json.loads(kubectl("get", "node", pod["spec"]["nodeName"], "-o", "json").stdout)
    assert node["metadata"]["labels"]["zthumb.io/pool"] == "gpu"


def test_job_asking_for_too_many_gpus_is_unschedulable(
    namespace: str, kubectl: Callable[..., Any], wait_until: Callable[..., Any]
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=gpu_job("sixteen-gpus", 16))

    def unschedulable() -> dict[str, Any] | None:
        for pod in job_pods(kubectl, namespace, "sixteen-gpus"):
            for cond in pod["status"].get("conditions", []):
                if cond["type"] == "PodScheduled" and cond["status"] == "False":
                    return cond
        return None

    cond = wait_until(unschedulable, timeout=60, description="PodScheduled=False on the 16-GPU pod")
    assert cond["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in cond.get("message", "")
    (pod,) = job_pods(kubectl, namespace, "sixteen-gpus")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


def write_chart(root: Path, kube_version: str) -> Path:
    chart = root / "smoke"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        textwrap.dedent(
            f"""\
            apiVersion: v2
            name: smoke
            version: 0.1.0
            kubeVersion: "{kube_version}"
            """
        )
    )
    # A Deployment (not just a ConfigMap) so `helm --wait` exercises kwok
    # making pods Ready on the CPU node.
    (chart / "templates" / "deploy.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: v1
            kind: ConfigMap
            metadata:
              name: {{ .Release.Name }}-cfg
            data:
              kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}
            ---
            apiVersion: apps/v1
            kind: Deployment
            metadata:
              name: {{ .Release.Name }}
            spec:
              replicas: 1
              selector:
                matchLabels: {app: {{ .Release.Name }}}
              template:
                metadata:
                  labels: {app: {{ .Release.Name }}}
                spec:
                  containers:
                  - name: app
                    image: registry.invalid/zthumb/server:test
                    securityContext:
                      runAsNonRoot: true
                      runAsUser: 65532
                      allowPrivilegeEscalation: false
                      capabilities: {drop: [ALL]}
                      seccompProfile: {type: RuntimeDefault}
            """
        )
    )
    return chart


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_helm_install_with_kube_version_constraint(
    namespace: str, cluster: Any, kubectl: Callable[..., Any], tmp_path: Path
) -> None:
    chart = write_chart(tmp_path / "ok", ">=1.30.0-0")
    cluster.helm("install", "smoke", str(chart), "-n", namespace, "--wait", "--timeout", "90s", timeout=120)
    cfg = json.loads(kubectl("get", "configmap", "smoke-cfg", "-n", namespace, "-o", "json").stdout)
    assert cfg["data"]["kubeVersion"] == "v1.36.3"
    deploy = json.loads(kubectl("get", "deployment", "smoke", "-n", namespace, "-o", "json").stdout)
    assert deploy["status"].get("readyReplicas") == 1

    # The constraint is really evaluated against the server: an impossible one fails.
    too_old = write_chart(tmp_path / "bad", "<1.0.0-0")
    res = cluster.helm("install", "never", str(too_old), "-n", namespace, check=False)
    assert res.returncode != 0
    assert "incompatible" in res.stderr.lower() or "kubeversion" in res.stderr.lower(), res.stderr


def test_serviceaccount_without_binding_is_forbidden(
    namespace: str, cluster: Any, kubectl: Callable[..., Any], wait_until: Callable[..., Any], tmp_path: Path
) -> None:
    kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    user = f"system:serviceaccount:{namespace}:nobody"

    can = kubectl("auth", "can-i", f"--as={user}", "list", "pods", "-n", namespace, check=False)
    assert can.stdout.strip() == "no", can

    # A real request authenticated only by a TokenRequest token (no client
    # cert: a kubeconfig with cluster + CA only), as a pod's process would.
    token = kubectl("create", "token", "nobody", "-n", namespace, "--duration=10m").stdout.strip()
    assert token.count(".") == 2  # a JWT
    ca = tmp_path / "ca.crt"
    ca_path = "jsonpath={.clusters[0].cluster.certificate-authority-data}"
    ca_b64 = kubectl("config", "view", "--raw", "--minify", "-o", ca_path).stdout
    ca.write_bytes(base64.b64decode(ca_b64))
    empty_kubeconfig = tmp_path / "empty-kubeconfig"
    empty_kubeconfig.write_text("apiVersion: v1\nkind: Config\n")

    def as_sa(*args: str) -> subprocess.CompletedProcess[str]:
        return kubectl(
            f"--kubeconfig={empty_kubeconfig}",
            f"--server={cluster.server}",
            f"--certificate-authority={ca}",
            f"--token={token}",
            *args,
            check=False,
        )

    denied = as_sa("get", "pods", "-n", namespace)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower(), denied.stderr
    assert user in denied.stderr  # authenticated as the SA, then denied by RBAC

    # Same token, once bound to a Role, is allowed: the denial above was RBAC.
    kubectl("create", "role", "pod-reader", "--verb=list,get", "--resource=pods", "-n", namespace)
    kubectl(
        "create",
        "rolebinding",
        "nobody-reads",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:nobody",
        "-n",
        namespace,
    )
    wait_until(
        lambda: as_sa("get", "pods", "-n", namespace).returncode == 0, timeout=30, description="RBAC grant"
    )


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_pod_security_restricted_rejects_privileged_pod(namespace: str, kubectl: Callable[..., Any]) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged"},
        "spec": {
            "containers": [
                {"name": "c", "image": "registry.invalid/x:1", "securityContext": {"privileged": True}}
            ]
        },
    }
    res = kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)
    assert res.returncode != 0
    assert "violates PodSecurity" in res.stderr, res.stderr
