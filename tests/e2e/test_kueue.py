"""A real Kueue (built by hack/cluster/build-kueue.sh, run as a process beside the local control plane)
admitting LoRAFinetune runs: all pods of a multi-node train Job or none, and a run its queue can
never admit refused up front, naming the field.

Kueue runs without its webhooks (the operator creates its Jobs suspended and labelled itself, which
is what Kueue's Job webhook would ensure) and with the plain CRDs (no conversion webhook). The
step pods are kwok's, as in test_operator.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import (
    PHASE_TIMEOUT,
    RUN,
    Kubectl,
    Operator,
    example,
    free_port,
    in_namespace,
    jobs,
    lft,
    wait_phase,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
KUEUE_CLUSTERQUEUE_RBAC = ROOT / "manifests/operator/namespaced/kueue-clusterqueues.yaml"
# Kueue's manager reads its metrics serving certificate from this fixed path when it does not
# manage certificates itself (cmd/kueue/main.go).
KUEUE_METRICS_CERTS = Path("/etc/kueue/metrics/certs")
TWO_NODES = {"resources": {"nodes": 2, "gpus": 1}}


def self_signed(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=kueue",
         "-keyout", str(directory / "tls.key"), "-out", str(directory / "tls.crt")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def crd_established(cluster: Any, name: str) -> bool:
    crd = json.loads(cluster.kubectl("get", "crd", name, "-o", "json").stdout)
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


@pytest.fixture(scope="module")
def kueue(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    binary = shutil.which("kueue")
    assert binary, "kueue not on PATH: run hack/cluster/build-k8s.sh (it calls hack/cluster/build-kueue.sh)"
    crds = sorted((Path(binary).parent.parent / "kueue-crds").glob("*.yaml"))
    assert crds, "Kueue's CRDs are missing: run hack/cluster/build-kueue.sh"
    for crd in crds:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    # Polled from the JSON, not `kubectl wait` or a jsonpath filter: both fail outright on a CRD
    # created a moment ago that has no conditions at all yet.
    deadline = time.monotonic() + 90
    for crd in ("clusterqueues", "localqueues", "workloads", "resourceflavors"):
        while not crd_established(cluster, f"{crd}.kueue.x-k8s.io"):
            assert time.monotonic() < deadline, f"CRD {crd}.kueue.x-k8s.io not Established in 90s"
            time.sleep(0.5)
    work = tmp_path_factory.mktemp("kueue")
    self_signed(work / "certs")
    if not (KUEUE_METRICS_CERTS / "tls.crt").exists():
        self_signed(KUEUE_METRICS_CERTS)
    health = free_port()
    (work / "config.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "config.kueue.x-k8s.io/v1beta2",
                "kind": "Configuration",
                "namespace": "kueue-system",
                "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
                "metrics": {"bindAddress": "0"},
                "webhook": {"port": free_port(), "host": "127.0.0.1", "certDir": str(work / "certs")},
                "leaderElection": {"leaderElect": False},
                "internalCertManagement": {"enable": False},
                "integrations": {"frameworks": ["batch/job"]},
            }
        )
    )
    cluster.kubectl("create", "namespace", "kueue-system", check=False)
    log = (work / "kueue.log").open("ab")
    process = subprocess.Popen(
        [binary, "--config", str(work / "config.yaml"), "--feature-gates=VisibilityOnDemand=false"],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, (work / "kueue.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, (
            "Kueue not ready in 60s:\n" + (work / "kueue.log").read_text()[-3000:]
        )
        time.sleep(0.5)
    yield
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


def queue(kubectl: Kubectl, ns: str, gpus: int, stop_policy: str = "None") -> str:
    """A ClusterQueue with ``gpus`` GPUs (and CPU and memory enough) behind LocalQueue team-a."""
    cluster_queue = f"{ns}-cq"
    api = "kueue.x-k8s.io/v1beta1"
    manifest = [
        {"apiVersion": api, "kind": "ResourceFlavor", "metadata": {"name": "default-flavor"}},
        {
            "apiVersion": api, "kind": "ClusterQueue", "metadata": {"name": cluster_queue},
            "spec": {
                "namespaceSelector": {}, "stopPolicy": stop_policy,
                "resourceGroups": [{
                    "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                    "flavors": [{"name": "default-flavor", "resources": [
                        {"name": "cpu", "nominalQuota": "64"}, {"name": "memory", "nominalQuota": "512Gi"},
                        {"name": "nvidia.com/gpu", "nominalQuota": str(gpus)},
                    ]}],
                }],
            },
        },
        {"apiVersion": api, "kind": "LocalQueue",
         "metadata": {"name": "team-a", "namespace": ns}, "spec": {"clusterQueue": cluster_queue}},
    ]  # fmt: skip
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifest}))
    return cluster_queue


def workloads(kubectl: Kubectl, ns: str) -> list[dict[str, Any]]:
    return json.loads(kubectl("get", "workloads.kueue.x-k8s.io", "-n", ns, "-o", "json").stdout)["items"]


def admitted(workload: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Admitted" and c["status"] == "True"
        for c in (workload.get("status") or {}).get("conditions", [])
    )


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_kueue_admits_a_two_node_run_whole_once_its_queue_opens(
    kueue: None,
    setup: Callable[..., Operator],
    namespace: str,
    kubectl: Kubectl,
    wait_until: Callable[..., Any],
) -> None:
    ns = namespace
    cluster_queue = queue(kubectl, ns, gpus=2, stop_policy="Hold")
    op = setup()
    kubectl("apply", "-f", "-", input=example(ns, queueName="team-a", **TWO_NODES))

    def held() -> dict[str, Any] | None:
        obj = lft(kubectl, ns)
        return obj if (obj.get("status") or {}).get("reason") == "Queued" and workloads(kubectl, ns) else None

    wait_until(held, timeout=PHASE_TIMEOUT, description="the first Job queued, its Workload pending")
    assert kubectl("get", "pods", "-n", ns, "-l", "batch.kubernetes.io/job-name", "-o", "name").stdout == ""
    kubectl("patch", "clusterqueue", cluster_queue, "--type=merge", "-p", '{"spec":{"stopPolicy":"None"}}')
    obj = wait_phase(kubectl, wait_until, ns, "Succeeded", op, timeout=PHASE_TIMEOUT * 2)
    assert obj["status"]["reason"] == "Succeeded"
    train_job = f"{RUN}-train"
    (train,) = [j for j in jobs(kubectl, ns) if j["metadata"]["name"] == train_job]
    assert (train["spec"]["parallelism"], train["spec"]["completionMode"]) == (2, "Indexed")
    assert train["spec"]["suspend"] is False  # Kueue let it go
    by_job = {w["metadata"]["ownerReferences"][0]["name"]: w for w in workloads(kubectl, ns)}
    assert set(by_job) == {j["metadata"]["name"] for j in jobs(kubectl, ns)}  # every step went through Kueue
    assert all(admitted(w) for w in by_job.values())
    (pod_set,) = by_job[train_job]["spec"]["podSets"]
    assert pod_set["count"] == 2  # one workload: both nodes' pods, admitted together
    gpu_usage = by_job[train_job]["status"]["admission"]["podSetAssignments"][0]["resourceUsage"]
    assert gpu_usage["nvidia.com/gpu"] == "2"


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_a_run_its_queue_can_never_admit_fails_naming_the_field(
    kueue: None,
    setup: Callable[..., Operator],
    namespace: str,
    kubectl: Kubectl,
    wait_until: Callable[..., Any],
) -> None:
    ns = namespace
    cluster_queue = queue(kubectl, ns, gpus=1)
    # The namespaced install plus the optional grant to read ClusterQueues.
    grant = in_namespace(KUEUE_CLUSTERQUEUE_RBAC.read_text(), ns).replace(
        "namespace: zthumb-system", f"namespace: {ns}"
    )
    grant = grant.replace("name: zthumb-operator-clusterqueues", f"name: zthumb-operator-clusterqueues-{ns}")
    kubectl("apply", "-f", "-", input=grant)
    try:
        op = setup()
        kubectl("apply", "-f", "-", input=example(ns, queueName="team-a", **TWO_NODES))
        obj = wait_phase(kubectl, wait_until, ns, "Failed", op)
        assert obj["status"]["reason"] == "InvalidSpec"
        message = obj["status"]["message"]
        assert message.startswith("spec.resources.nodes: the Job asks for 2 nvidia.com/gpu (2 pod(s))"), (
            message
        )
        assert f"ClusterQueue {cluster_queue} (LocalQueue team-a) can give one workload at most 1" in message
        assert jobs(kubectl, ns) == []  # refused before the first Job
    finally:
        kubectl("delete", "-f", "-", "--ignore-not-found", input=grant, check=False)
