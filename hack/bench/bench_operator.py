#!/usr/bin/env python3
"""Benchmark the LoRAFinetune operator on the local control plane (not a test).

    hack/cluster/cluster.sh up && eval "$(hack/cluster/cluster.sh env)"
    .venv/bin/python hack/bench/bench_operator.py [--runs 100] [--deploy per-run|shared|none]

Creates N LoRAFinetunes at once in a fresh namespace (kwok completes the step pods
immediately), with the operator running as a local process, and reports: time until
all are Succeeded, p50/p95 from create to the run's first Job, the operator's peak RSS,
and API requests per run (the operator's reconciler, from its own metrics, and the
whole apiserver, from apiserver_request_total, which includes the controllers and kwok).

--deploy per-run (default): each run deploys to its own 1-replica Deployment, so the
rollouts run in parallel. shared: all target one Deployment and the operator serializes
their rollouts (one at a time, by design). none: deploy and eval disabled.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        ["kubectl", *args], input=input, capture_output=True, text=True, timeout=300, check=False
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def apiserver_requests() -> float:
    total = 0.0
    for line in kubectl("get", "--raw", "/metrics").splitlines():
        if line.startswith("apiserver_request_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def operator_requests(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        float(m.group(1))
        for m in re.finditer(r"^zthumb_operator_api_requests_total\{[^}]*\} (\S+)$", text, re.M)
    )


def server_manifest(ns: str, name: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "zthumb", "app.kubernetes.io/instance": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "zthumb", "image": "registry.invalid/zthumb/server:bench"}]},
            },
        },
    }


def run_manifest(ns: str, i: int, deploy: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"dataset": {"triggerWord": "z"}, "training": {"maxTrainSteps": 10}}
    if deploy == "none":
        spec["deploy"] = {"enabled": False}
        spec["eval"] = {"enabled": False}
    else:
        spec["deploy"] = {"deployment": f"zthumb-{i}" if deploy == "per-run" else "zthumb"}
    return {
        "apiVersion": "zthumb.io/v1alpha1",
        "kind": "LoRAFinetune",
        "metadata": {"name": f"run-{i:03d}", "namespace": ns},
        "spec": spec,
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--deploy", choices=["per-run", "shared", "none"], default="per-run")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--keep", action="store_true", help="keep the namespace afterwards")
    args = parser.parse_args()
    if not os.environ.get("KUBECONFIG"):
        raise SystemExit('KUBECONFIG is not set: eval "$(hack/cluster/cluster.sh env)"')

    from kubernetes import client, config, watch

    config.load_kube_config()
    custom = client.CustomObjectsApi()
    batch = client.BatchV1Api()

    ns = f"bench-{uuid.uuid4().hex[:6]}"
    kubectl("apply", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/lorafinetunes.zthumb.io", "--timeout=60s")
    kubectl("create", "namespace", ns)
    while kubectl("get", "serviceaccount", "default", "-n", ns, check=False) == "":
        time.sleep(0.5)
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{ns}-data"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "hostPath": {"path": f"/tmp/{ns}"},
            "claimRef": {"namespace": ns, "name": "zthumb-data"},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "zthumb-data", "namespace": ns},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "volumeName": f"{ns}-data",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    servers = []
    if args.deploy == "per-run":
        servers = [server_manifest(ns, f"zthumb-{i}") for i in range(args.runs)]
    elif args.deploy == "shared":
        servers = [server_manifest(ns, "zthumb")]
    items = [pv, pvc, *servers]
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    print(
        f"namespace {ns}: {len(servers)} server Deployment(s); waiting for them to be available", flush=True
    )
    kubectl(
        "wait",
        "--for=condition=Available",
        "deployment",
        "--all",
        "-n",
        ns,
        "--timeout=300s",
        check=bool(servers),
    )

    metrics_port = free_port()
    env = {
        **os.environ,
        "ZTHUMB_OPERATOR_NAMESPACES": ns,
        "ZTHUMB_OPERATOR_METRICS_PORT": str(metrics_port),
        "ZTHUMB_OPERATOR_LIVENESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/healthz",
        "ZTHUMB_OPERATOR_SIMULATED_EVAL_SUMMARY": '{"requests": 8}',
        "ZTHUMB_OPERATOR_LOG_LEVEL": "WARNING",
    }
    log = open(f"/tmp/{ns}-operator.log", "wb")  # noqa: SIM115
    op = subprocess.Popen([sys.executable, "-m", "zthumb_operator.cli"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                operator_requests(metrics_port)
                break
            except OSError:
                if time.monotonic() > deadline or op.poll() is not None:
                    raise SystemExit(f"operator did not start; see /tmp/{ns}-operator.log") from None
                time.sleep(0.2)
        time.sleep(2)  # watches established
        base_op = operator_requests(metrics_port)
        base_api = apiserver_requests()

        first_job: dict[str, float] = {}
        stop = threading.Event()

        def watch_jobs() -> None:
            w = watch.Watch()
            for event in w.stream(batch.list_namespaced_job, ns, timeout_seconds=int(args.timeout)):
                if event["type"] == "ADDED":
                    owner = (event["object"].metadata.owner_references or [None])[0]
                    if owner is not None and owner.name not in first_job:
                        first_job[owner.name] = time.monotonic()
                if stop.is_set():
                    w.stop()

        watcher = threading.Thread(target=watch_jobs, daemon=True)
        watcher.start()
        time.sleep(0.5)

        created: dict[str, float] = {}
        t0 = time.monotonic()
        for i in range(args.runs):
            body = run_manifest(ns, i, args.deploy)
            custom.create_namespaced_custom_object("zthumb.io", "v1alpha1", ns, "lorafinetunes", body)
            created[body["metadata"]["name"]] = time.monotonic()
        t_created = time.monotonic() - t0

        phases: dict[str, str] = {}
        while time.monotonic() - t0 < args.timeout:
            listed = custom.list_namespaced_custom_object("zthumb.io", "v1alpha1", ns, "lorafinetunes")
            phases = {
                o["metadata"]["name"]: (o.get("status") or {}).get("phase", "") for o in listed["items"]
            }
            if sum(p in ("Succeeded", "Failed") for p in phases.values()) == args.runs:
                break
            time.sleep(0.25)
        t_all = time.monotonic() - t0
        stop.set()
        time.sleep(1)
        op_requests = operator_requests(metrics_port) - base_op
        api_requests = apiserver_requests() - base_api
        with open(f"/proc/{op.pid}/status") as fh:
            hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    finally:
        op.send_signal(signal.SIGTERM)
        try:
            op.wait(timeout=15)
        except subprocess.TimeoutExpired:
            op.kill()

    latencies = [first_job[n] - created[n] for n in created if n in first_job]
    succeeded = sum(p == "Succeeded" for p in phases.values())
    rows = [
        ("runs", f"{args.runs} (deploy: {args.deploy})"),
        ("created in", f"{t_created:.2f} s"),
        ("all Succeeded/Failed after", f"{t_all:.1f} s  ({succeeded} Succeeded)"),
        ("create → first Job p50", f"{statistics.median(latencies):.3f} s" if latencies else "n/a"),
        ("create → first Job p95", f"{pct(latencies, 0.95):.3f} s" if latencies else "n/a"),
        ("create → first Job max", f"{max(latencies):.3f} s" if latencies else "n/a"),
        ("operator peak RSS", f"{hwm / 1024:.0f} MiB"),
        ("operator API requests / run", f"{op_requests / args.runs:.1f}"),
        ("apiserver requests / run (all clients)", f"{api_requests / args.runs:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if not args.keep:
        kubectl("delete", "namespace", ns, "--wait=false")
        kubectl("delete", "pv", f"{ns}-data", "--wait=false", check=False)
    ok = succeeded == args.runs
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
