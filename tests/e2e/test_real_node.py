"""The local cluster's real node: pods really run (containerd + runc), Services,
cluster DNS and dynamically provisioned volumes work, and the node looks like
a GPU node to the scheduler.

Needs `hack/cluster/cluster.sh up` as root (the real node is on by default there). The
pods use the tiny busybox image that `hack/cluster/build-node.sh` builds and `up`
imports; nothing is pulled.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

NODE = "zthumb-real-0"
IMAGE = "localhost/zthumb/busybox:1.35"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# Every wait is bounded; a pod on an idle 2-core machine starts in a few seconds.
POD_TIMEOUT_S = 120


def get_json(kubectl: Callable[..., Any], *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


@pytest.fixture(scope="module")
def real_node(cluster: Any) -> dict[str, Any]:
    proc = cluster.kubectl("get", "node", NODE, "-o", "json", check=False)
    if proc.returncode != 0:
        # hack/cluster/cluster.sh starts the node by default only as root, same rule here.
        wanted = os.environ.get("ZTHUMB_REAL_NODE", "1" if os.geteuid() == 0 else "0")
        if wanted == "0":
            pytest.skip("the cluster runs without the real node (ZTHUMB_REAL_NODE=0, or not root)")
        pytest.fail(
            f"node {NODE} is missing: start the cluster as root with `hack/cluster/cluster.sh up` "
            "(or set ZTHUMB_REAL_NODE=0 to skip these tests)",
            pytrace=False,
        )
    node: dict[str, Any] = json.loads(proc.stdout)
    return node


def restricted_pod(
    name: str,
    script: str,
    *,
    labels: dict[str, str] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A pod that passes Pod Security `restricted`, pinned to the real node."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "nodeSelector": {"zthumb.io/node": "real"},
            "tolerations": [GPU_TOLERATION],
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65534,
                "runAsGroup": 65534,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", script],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": mounts or [],
                }
            ],
            "volumes": volumes or [],
        },
    }


def apply(kubectl: Callable[..., Any], namespace: str, *objects: dict[str, Any]) -> None:
    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
    )


def wait_finished(
    kubectl: Callable[..., Any], wait_until: Callable[..., Any], namespace: str, name: str
) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        pod: dict[str, Any] = get_json(kubectl, "pod", name, "-n", namespace)
        return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None

    try:
        pod: dict[str, Any] = wait_until(
            finished, timeout=POD_TIMEOUT_S, interval=1, description=f"pod {name} to finish"
        )
    except AssertionError:
        events = kubectl("get", "events", "-n", namespace, check=False).stdout
        describe = kubectl("describe", "pod", name, "-n", namespace, check=False).stdout
        raise AssertionError(f"pod {name} did not finish\n{describe}\n{events}") from None
    return pod


def logs(kubectl: Callable[..., Any], namespace: str, name: str) -> str:
    out: str = kubectl("logs", name, "-n", namespace).stdout
    return out


def test_node_is_real_gpu_node(real_node: dict[str, Any]) -> None:
    meta, spec, status = real_node["metadata"], real_node["spec"], real_node["status"]
    assert "kwok.x-k8s.io/node" not in meta.get("annotations", {}), "kwok must not manage the real node"
    labels = meta["labels"]
    assert labels["zthumb.io/pool"] == "gpu"
    assert labels["zthumb.io/node"] == "real"
    assert labels["nvidia.com/gpu.present"] == "true"
    taints = spec.get("taints", [])
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in taints
    # Soft: keeps pods that did not ask for the real node on kwok's nodes.
    assert {"key": "zthumb.io/node", "value": "real", "effect": "PreferNoSchedule"} in taints
    assert status["allocatable"]["nvidia.com/gpu"] == "2"
    assert status["capacity"]["nvidia.com/gpu"] == "2"
    assert status["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.")
    assert status["nodeInfo"]["kubeletVersion"].startswith("v1.36.")
    ready = {c["type"]: c["status"] for c in status["conditions"]}
    assert ready["Ready"] == "True"
    addresses = {a["type"]: a["address"] for a in status["addresses"]}
    assert addresses["InternalIP"] == "10.88.0.1"


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_restricted_pod_runs_on_real_node(
    real_node: dict[str, Any], kubectl: Callable[..., Any], wait_until: Callable[..., Any], namespace: str
) -> None:
    name = "hello"
    pod_spec = restricted_pod(
        name, "echo hello-from-$(hostname) uid=$(id -u); ls /var/run/secrets/kubernetes.io/serviceaccount"
    )
    # Like the trainer: one of the node's (advertised) GPUs.
    pod_spec["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    apply(kubectl, namespace, pod_spec)
    pod = wait_finished(kubectl, wait_until, namespace, name)

    assert pod["spec"]["nodeName"] == NODE
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    cs = pod["status"]["containerStatuses"][0]
    assert cs["containerID"].startswith("containerd://")
    assert cs["state"]["terminated"]["exitCode"] == 0
    assert pod["status"]["podIP"].startswith("10.88.")
    out = logs(kubectl, namespace, name)
    assert "hello-from-hello uid=65534" in out
    assert "token" in out  # the projected ServiceAccount token is mounted


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_service_clusterip_and_dns_from_pod(
    real_node: dict[str, Any], kubectl: Callable[..., Any], wait_until: Callable[..., Any], namespace: str
) -> None:
    # Server: busybox httpd on 8080 behind a ClusterIP Service on port 80.
    server = restricted_pod(
        "web",
        "mkdir -p /tmp/www && echo pong-from-web > /tmp/www/index.html"
        " && exec httpd -f -v -p 8080 -h /tmp/www",
        labels={"app": "web"},
    )
    server["spec"]["restartPolicy"] = "Always"
    server["spec"]["containers"][0]["ports"] = [{"containerPort": 8080, "name": "http"}]
    server["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    apply(kubectl, namespace, server, service)
    kubectl(
        "wait",
        "pod/web",
        "-n",
        namespace,
        "--for=condition=Ready",
        f"--timeout={POD_TIMEOUT_S}s",
        timeout=POD_TIMEOUT_S + 10,
    )
    cluster_ip = get_json(kubectl, "service", "web", "-n", namespace)["spec"]["clusterIP"]
    # exec goes apiserver -> kubelet (TLS both ways) -> containerd's stream server.
    served = kubectl("exec", "web", "-n", namespace, "--", "cat", "/tmp/www/index.html").stdout
    assert served == "pong-from-web\n"

    fqdn = f"web.{namespace}.svc.cluster.local"
    # nslookup (busybox's own DNS client) checks the FQDN; nc resolves through
    # the libc resolver, which applies the search list of /etc/resolv.conf, so
    # `web.<ns>.svc` checks the short form. Retries are bounded: kube-proxy
    # programs a new Service within a second or two.
    script = f"""
set -u
cat /etc/resolv.conf
for i in $(seq 1 20); do
  if nslookup {fqdn} > /tmp/ns 2>&1 && grep -q '{cluster_ip}' /tmp/ns; then break; fi
  sleep 1
done
echo "== fqdn"; cat /tmp/ns
echo "== short"
printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 web.{namespace}.svc 80 2>&1 || true
echo "== api"; nslookup kubernetes.default.svc.cluster.local 2>&1 || true
for i in $(seq 1 20); do
  printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {cluster_ip} 80 > /tmp/http 2>&1 \\
    && grep -q pong /tmp/http && break
  sleep 1
done
echo "== http"; cat /tmp/http
echo "== apiserver"
# Plain HTTP to the apiserver's TLS port: it answers with a 400 that names the mistake.
printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 kubernetes.default.svc 443 2>&1 || true
"""
    apply(kubectl, namespace, restricted_pod("client", script))
    pod = wait_finished(kubectl, wait_until, namespace, "client")
    assert pod["spec"]["nodeName"] == NODE
    out = logs(kubectl, namespace, "client")

    assert "nameserver 10.96.0.10" in out
    assert f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local" in out
    fqdn_part = out.split("== fqdn", 1)[1].split("== short", 1)[0]
    assert cluster_ip in fqdn_part, out
    short_part = out.split("== short", 1)[1].split("== api", 1)[0]
    assert "pong-from-web" in short_part, out
    api_part = out.split("== api", 1)[1].split("== http", 1)[0]
    assert "10.96.0.1" in api_part, out
    http_part = out.split("== http", 1)[1].split("== apiserver", 1)[0]
    assert "200 OK" in http_part and "pong-from-web" in http_part, out
    apiserver_part = out.split("== apiserver", 1)[1]
    assert "Client sent an HTTP request to an HTTPS server" in apiserver_part, out


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_default_storageclass_provisions_volume(
    real_node: dict[str, Any], kubectl: Callable[..., Any], wait_until: Callable[..., Any], namespace: str
) -> None:
    classes = get_json(kubectl, "storageclass")["items"]
    defaults = [
        c["metadata"]["name"]
        for c in classes
        if c["metadata"].get("annotations", {}).get("storageclass.kubernetes.io/is-default-class") == "true"
    ]
    assert defaults == ["zthumb-local"]

    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        # ReadWriteMany like the chart's claim; no storageClassName: the default.
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "16Mi"}}},
    }
    marker = uuid.uuid4().hex
    writer = restricted_pod(
        "writer",
        f"echo {marker} > /data/marker && ls -ln /data && cat /data/marker",
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        mounts=[{"name": "data", "mountPath": "/data"}],
    )
    apply(kubectl, namespace, claim, writer)
    pod = wait_finished(kubectl, wait_until, namespace, "writer")
    assert pod["status"]["phase"] == "Succeeded", kubectl("describe", "pod", "writer", "-n", namespace).stdout
    assert marker in logs(kubectl, namespace, "writer")

    pvc = get_json(kubectl, "pvc", "data", "-n", namespace)
    assert pvc["status"]["phase"] == "Bound"
    assert pvc["spec"]["storageClassName"] == "zthumb-local"
    pv = get_json(kubectl, "pv", pvc["spec"]["volumeName"])
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == [NODE]

    # A second pod sees what the first one wrote.
    reader = restricted_pod(
        "reader",
        "cat /data/marker",
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        mounts=[{"name": "data", "mountPath": "/data"}],
    )
    apply(kubectl, namespace, reader)
    wait_finished(kubectl, wait_until, namespace, "reader")
    assert marker in logs(kubectl, namespace, "reader")
