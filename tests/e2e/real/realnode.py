"""Helpers of the real-node e2e tests (see conftest.py); a plain module the tests import."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# waiting.py, in tests/e2e, holds the polling every e2e test shares. pytest puts only each test's
# own folder on sys.path (these folders are no packages), so add the parent, once.
_E2E_DIR = str(Path(__file__).resolve().parents[1])
if _E2E_DIR not in sys.path:
    sys.path.insert(0, _E2E_DIR)
# The tests import wait_until from here with the other helpers; after the path, hence E402.
from waiting import wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
NODE = "zthumb-real-0"
# The images are tagged with the project version (hack/images/build-images.sh).
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
SERVER_IMAGE = f"ghcr.io/zthumb/zthumb:{VERSION}"
TRAINER_IMAGE = f"ghcr.io/zthumb/trainer:{VERSION}"
OPERATOR_IMAGE = f"ghcr.io/zthumb/operator:{VERSION}"
# The chart's helm test pod needs curl + sh; hack/images/build-images.sh builds it locally.
HELM_TEST_IMAGE = os.environ.get("ZTHUMB_HELM_TEST_IMAGE", f"ghcr.io/zthumb/helm-test:{VERSION}")
IMAGES = (SERVER_IMAGE, TRAINER_IMAGE, OPERATOR_IMAGE, HELM_TEST_IMAGE)
GPU_TAINT = "nvidia.com/gpu"
OPERATOR_NS = "zthumb-system"
# The operator's namespace (Pod Security restricted), applied before the chart is installed in it.
OPERATOR_NAMESPACE = ROOT / "manifests/operator/00-namespace.yaml"
OPERATOR_CHART = ROOT / "charts/zthumb-operator"
OPERATOR_RELEASE = "zthumb-operator"
CRD = ROOT / "crds/lorafinetunes.zthumb.io.yaml"
# Restricted-compliant security settings for the pods the tests create themselves.
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
COMMAND_TIMEOUT_S = 120

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def log(message: str) -> None:
    """Progress lines (shown with -s, and in the captured output of a failing test)."""
    print(f"[real {time.strftime('%H:%M:%S')}] {message}", flush=True)


def get_json(kubectl: Kubectl, *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def pod_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    return status.get("phase") == "Running" and conditions.get("Ready") == "True"


def assert_ran_on_real_node(pod: dict[str, Any], *, completed: bool = False) -> None:
    """The pod was scheduled to the real node and its containers really ran in containerd.

    ``completed``: a finished Job pod, so every container (and init container) exited 0.
    """
    name = pod["metadata"]["name"]
    assert pod["spec"].get("nodeName") == NODE, f"{name} ran on {pod['spec'].get('nodeName')!r}, not {NODE}"
    status = pod.get("status") or {}
    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    assert statuses, f"{name} has no container statuses"
    for cs in statuses:
        assert (cs.get("containerID") or "").startswith("containerd://"), (
            f"{name}/{cs['name']}: container ID {cs.get('containerID')!r} is not containerd's"
        )
        assert cs.get("imageID") or "", f"{name}/{cs['name']} has no imageID"
        if completed or cs in (status.get("initContainerStatuses") or []):
            terminated = (cs.get("state") or {}).get("terminated") or {}
            assert terminated.get("exitCode") == 0, f"{name}/{cs['name']} did not exit 0: {cs.get('state')}"
    if completed:
        assert status.get("phase") == "Succeeded", f"{name} is {status.get('phase')}"


def pod_manifest(
    name: str,
    *,
    image: str,
    command: list[str],
    labels: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
    restart: str = "Never",
    ports: list[dict[str, Any]] | None = None,
    readiness: dict[str, Any] | None = None,
    memory: str = "2Gi",
) -> dict[str, Any]:
    """A pod that passes Pod Security ``restricted`` (read-only root, /tmp an emptyDir)."""
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",
        "command": command,
        "env": [{"name": k, "value": v} for k, v in {"HOME": "/tmp", **(env or {})}.items()],
        "securityContext": CONTAINER_SECURITY,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": memory}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *(mounts or [])],
    }
    if ports:
        container["ports"] = ports
    if readiness:
        container["readinessProbe"] = readiness
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "restartPolicy": restart,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 2,
            "securityContext": POD_SECURITY,
            "containers": [container],
            "volumes": [{"name": "tmp", "emptyDir": {}}, *(volumes or [])],
        },
    }


def http_file_server(
    name: str,
    script: str,
    *,
    env: dict[str, str] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """A pod of the trainer image that runs the shell ``script`` (which ends by serving HTTP on port
    8000) and a Service ``name`` on port 80 in front of it: the in-cluster origin of what the runs
    under test download. Ready once the port answers."""
    pod = pod_manifest(
        name,
        image=TRAINER_IMAGE,
        command=["/bin/sh", "-ec", script],
        labels={"app.kubernetes.io/name": name},
        env=env,
        volumes=[{"name": "srv", "emptyDir": {}}, *(volumes or [])],
        mounts=[{"name": "srv", "mountPath": "/srv"}, *(mounts or [])],
        restart="Always",
        ports=[{"name": "http", "containerPort": 8000}],
        readiness={"tcpSocket": {"port": "http"}, "periodSeconds": 2},
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }
    return [pod, service]


def operator_chart_args() -> list[str]:
    """`helm install` arguments of the operator chart: cluster-wide, its default images, the CRD
    applied by the test itself (from crds/, upgraded in place), no admission policy (as before the
    chart), and the helm test pod from the image the tests imported."""
    registry, _, rest = HELM_TEST_IMAGE.partition("/")
    repository, _, tag = rest.rpartition(":")
    return [
        "--skip-crds",
        "--set", "admission.enabled=false",
        "--set", f"tests.image.registry={registry},tests.image.repository={repository},tests.image.tag={tag}",
    ]  # fmt: skip


def operator_pods(kubectl: Kubectl) -> list[dict[str, Any]]:
    return get_json(kubectl, "pods", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/name=zthumb-operator")[
        "items"
    ]


@dataclass
class ModelServer:
    url: str  # http://tiny-model.<ns>.svc
    sha256: str
    pod: str
    clip_sha256: str  # the tiny CLIP of the eval's metrics, served beside the model


MODEL_PATH = "models/tiny_sdxl.safetensors"
MODEL_CONFIG = "models/tiny_sdxl-config"


def tiny_finetune(
    ns: str,
    model: ModelServer,
    name: str,
    *,
    dataset: str,
    steps: int,
    checkpoint_every: int,
    **sections: Any,
) -> dict[str, Any]:
    """A LoRAFinetune of the tiny model that ``model`` serves in the cluster: 256 px images from
    ``dataset`` on the volume, rank 4 in fp32, the trainer image already on the node. Each of
    ``sections`` (``resources``, ``storage``, ``deploy``, ``eval``, more ``training``) is merged
    into the spec's section of that name."""
    spec: dict[str, Any] = {
        "baseModel": {
            "url": f"{model.url}/tiny_sdxl.safetensors",
            "sha256": model.sha256,
            "path": MODEL_PATH,
            "configUrl": f"{model.url}/diffusers/",
            "configPath": MODEL_CONFIG,
        },
        "dataset": {"path": dataset, "triggerWord": "zthumb", "resolution": 256},
        "training": {
            "rank": 4,
            "alpha": 4,
            "learningRate": 0.001,
            "maxTrainSteps": steps,
            "checkpointingSteps": checkpoint_every,
            "mixedPrecision": "no",
            "gradientCheckpointing": False,
        },
        "images": {"trainer": TRAINER_IMAGE, "pullPolicy": "Never"},
    }
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value}
    return {
        "apiVersion": "zthumb.io/v1alpha1",
        "kind": "LoRAFinetune",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def lft(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return get_json(kubectl, "lft", name, "-n", ns)


def wait_phase(
    kubectl: Kubectl, ns: str, run: str, phases: set[str], timeout: float, *, interval: float = 1.0
) -> dict[str, Any]:
    """The LoRAFinetune once its phase is one of ``phases``; on a timeout the error carries its
    status and the operator's log."""

    def reached() -> dict[str, Any] | None:
        obj = lft(kubectl, ns, run)
        return obj if (obj.get("status") or {}).get("phase") in phases else None

    try:
        return wait_until(reached, timeout, f"{run} in phase {phases}", interval)
    except AssertionError as exc:
        status = (lft(kubectl, ns, run).get("status")) or {}
        op_log = "".join(
            kubectl("logs", "-n", OPERATOR_NS, p["metadata"]["name"], "--tail=60", check=False).stdout
            for p in operator_pods(kubectl)
        )
        raise AssertionError(
            f"{exc}\nstatus: {json.dumps(status, indent=1)}\noperator log:\n{op_log}"
        ) from None


# --------------------------------------------------------------------------- the server's API

# One HTTP request from inside a pod (python3 of the server image): METHOD URL [BODY], the API key
# on stdin (empty: no Authorization header), so it shows in no argv, log or failure message.
# URL may be a path on the pod's own loopback. Prints {"status": ..., "body": ...}; a binary body
# (a report's PNG) is decoded leniently, since its callers look at the status only.
HTTP_REQUEST = (
    "import json, sys, urllib.request, urllib.error\n"
    "method, url, body = sys.argv[1], sys.argv[2], (sys.argv[3:] or [''])[0]\n"
    "url = 'http://127.0.0.1:8080' + url if url.startswith('/') else url\n"
    "key = sys.stdin.read().strip()\n"
    "headers = {'Content-Type': 'application/json'}\n"
    "if key:\n"
    "    headers['Authorization'] = 'Bearer ' + key\n"
    "data = body.encode() if body else None\n"
    "request = urllib.request.Request(url, data=data, headers=headers, method=method)\n"
    "try:\n"
    "    response = urllib.request.urlopen(request, timeout=120)\n"
    "    status, text = response.status, response.read().decode(errors='replace')\n"
    "except urllib.error.HTTPError as error:\n"
    "    status, text = error.code, error.read().decode(errors='replace')\n"
    "print(json.dumps({'status': status, 'body': text}))\n"
)


def http_in_pod(
    kubectl: Kubectl, ns: str, pod: str, request: str, *, key: str | None, body: str = ""
) -> tuple[int, str]:
    """(status, body) of one request (``request``: "GET /models", "POST http://...") made from
    container ``zthumb`` of ``pod``."""
    method, _, url = request.partition(" ")
    out = kubectl(
        "exec", "-i", "-n", ns, pod, "-c", "zthumb", "--", "python3", "-c", HTTP_REQUEST, method, url, body,
        input=key or "",
    ).stdout  # fmt: skip
    answer = json.loads(out)
    return int(answer["status"]), str(answer["body"])


def read_api_key(kubectl: Kubectl, ns: str, secret: str) -> str:
    """The server's API key, read the way the chart's NOTES.txt tells a user to."""
    encoded = kubectl("get", "secret", secret, "-n", ns, "-o", "jsonpath={.data.api-key}").stdout
    key = base64.b64decode(encoded).decode()
    assert key, f"Secret {secret} holds no api-key"
    return key
