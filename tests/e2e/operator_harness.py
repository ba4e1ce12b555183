"""The operator e2e harness: the operator as a local process in a fresh namespace behind the
namespaced RBAC of manifests/operator/namespaced/, a stand-in for the chart's server, and helpers
to read runs and Jobs (test_operator.py, test_kueue.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "lorafinetunes.zthumb.io.yaml"
EXAMPLE = ROOT / "manifests" / "examples" / "finetune.yaml"
OPERATOR_RBAC = [
    ROOT / "manifests/operator/namespaced/role.yaml",
    ROOT / "manifests/operator/namespaced/rolebinding.yaml",
]
RUN = "z-style"
PHASE_TIMEOUT = 90

Kubectl = Callable[..., subprocess.CompletedProcess[str]]

# The inference server as the chart renders it, reduced to what the operator touches
# (Deployment `zthumb` with container `zthumb`, Service `zthumb` :8080 `http`, PVC at /data, the
# API key from Secret `zthumb-api-key`).
SERVER = """
apiVersion: v1
kind: PersistentVolume
metadata: {name: NS-data, labels: {zthumb.io/e2e: "true"}}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  storageClassName: ""
  persistentVolumeReclaimPolicy: Delete
  hostPath: {path: /tmp/zthumb-e2e/NS}
  claimRef: {namespace: NS, name: zthumb-data}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: zthumb-data, namespace: NS}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ""
  volumeName: NS-data
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Secret
metadata: {name: zthumb-api-key, namespace: NS}
stringData: {api-key: e2e-generated-key}
---
apiVersion: v1
kind: Service
metadata: {name: zthumb, namespace: NS}
spec:
  selector: {app.kubernetes.io/name: zthumb, app.kubernetes.io/instance: zthumb}
  ports: [{name: http, port: 8080, targetPort: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: zthumb
  namespace: NS
  labels: {app.kubernetes.io/name: zthumb, app.kubernetes.io/instance: zthumb}
spec:
  replicas: 1
  selector: {matchLabels: {app.kubernetes.io/name: zthumb, app.kubernetes.io/instance: zthumb}}
  template:
    metadata: {labels: {app.kubernetes.io/name: zthumb, app.kubernetes.io/instance: zthumb}}
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: zthumb
        image: registry.invalid/zthumb/server:test
        ports: [{name: http, containerPort: 8080}]
        env:
        - {name: ZTHUMB_BACKEND, value: full}
        - {name: Z_LORA_PATH, value: /data/models/lora/previous}
        - name: ZTHUMB_API_KEY
          valueFrom: {secretKeyRef: {name: zthumb-api-key, key: api-key}}
        securityContext:
          allowPrivilegeEscalation: false
          capabilities: {drop: [ALL]}
          seccompProfile: {type: RuntimeDefault}
        volumeMounts: [{name: data, mountPath: /data}]
      volumes:
      - {name: data, persistentVolumeClaim: {claimName: zthumb-data}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_account_credentials(kubectl: Kubectl, ns: str, account: str, duration: str) -> tuple[str, str]:
    """A token of ``account`` valid for ``duration`` and the cluster's CA (base64, as a kubeconfig
    holds it): what a pod of that ServiceAccount would authenticate with."""
    token = kubectl("create", "token", account, "-n", ns, f"--duration={duration}").stdout.strip()
    ca = kubectl(
        "config",
        "view",
        "--raw",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ).stdout
    return token, ca


def in_namespace(text: str, ns: str) -> str:
    return text.replace("namespace: ml", f"namespace: {ns}")


def example(ns: str, **spec_overrides: Any) -> str:
    doc = yaml.safe_load(in_namespace(EXAMPLE.read_text(), ns))
    for path, value in spec_overrides.items():
        node = doc["spec"]
        keys = path.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return json.dumps(doc)


def lft(kubectl: Kubectl, ns: str, name: str = RUN) -> dict[str, Any]:
    return json.loads(kubectl("get", "lft", name, "-n", ns, "-o", "json").stdout)


def jobs(kubectl: Kubectl, ns: str) -> list[dict[str, Any]]:
    out = kubectl("get", "jobs", "-n", ns, "-l", "app.kubernetes.io/managed-by=zthumb-operator", "-o", "json")
    return json.loads(out.stdout)["items"]


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == ctype:
            return cond
    return None


class Operator:
    """The operator as a local process, authenticated as ServiceAccount ``zthumb-operator``."""

    def __init__(self, ns: str, kubeconfig: Path, log: Path, env: dict[str, str]) -> None:
        self.ns, self.kubeconfig, self.log_path, self.extra = ns, kubeconfig, log, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ZTHUMB_OPERATOR_")},
            "KUBECONFIG": str(self.kubeconfig),
            "ZTHUMB_OPERATOR_NAMESPACES": self.ns,
            "ZTHUMB_OPERATOR_METRICS_PORT": str(free_port()),
            "ZTHUMB_OPERATOR_LIVENESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/healthz",
            "ZTHUMB_OPERATOR_SIMULATED_EVAL_SUMMARY": '{"requests": 8, "meanPixelDifference": 0.12}',
            "ZTHUMB_OPERATOR_ROLLOUT_POLL_SECONDS": "0.5",
            **self.extra,
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zthumb_operator.cli"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def wait_phase(
    kubectl: Kubectl,
    wait_until: Callable[..., Any],
    ns: str,
    phase: str,
    op: Operator,
    *,
    timeout: float = PHASE_TIMEOUT,
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        obj = lft(kubectl, ns)
        return obj if (obj.get("status") or {}).get("phase") == phase else None

    try:
        return wait_until(reached, timeout=timeout, interval=0.5, description=f"phase {phase}")
    except AssertionError as exc:
        status = lft(kubectl, ns).get("status") or {}
        raise AssertionError(
            f"{exc}\nstatus: {json.dumps(status, indent=1)}\noperator log:\n{op.log()}"
        ) from None
