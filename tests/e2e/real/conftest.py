"""Fixtures for the real-node end-to-end tests.

Everything here runs in real containers on the local cluster's real node
``zthumb-real-0`` (kubelet + containerd + runc, see hack/cluster/README-cluster.md), from the
images hack/images/build-images.sh builds from our Dockerfiles and imports into its
containerd. For the duration of the module:

* the kwok nodes are cordoned and the real node's ``nvidia.com/gpu`` taint is
  lifted, so the real node is the whole cluster: its GPU pool (the train Job selects
  ``zthumb.io/pool: gpu`` and requests ``nvidia.com/gpu``) and its CPU pool (the
  operator, the CPU steps and the helm test pod tolerate no GPU taint, as on a real
  cluster with a CPU pool). Both are restored in teardown;
* the operator is installed with its chart, charts/zthumb-operator (cluster-wide, its
  own image and ServiceAccount; ``helm test`` checks it), the tiny SDXL model is served
  over HTTP by a pod of the trainer image, and one namespace enforcing Pod Security
  ``restricted`` holds the rest.

The helpers live in realnode.py (the tests import nothing from conftest). Every fixture
is module-scoped: one test module holds the real tests, so the slow parts (images
starting, the model being built and fetched) happen once, and the nodes are restored
before the kwok tests run ("package" scope on a directory without __init__.py lasted
the whole session: the kwok tests then ran with their nodes cordoned).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from realnode import (
    CRD,
    GPU_TAINT,
    IMAGES,
    NODE,
    OPERATOR_CHART,
    OPERATOR_NAMESPACE,
    OPERATOR_NS,
    OPERATOR_RELEASE,
    Kubectl,
    ModelServer,
    assert_ran_on_real_node,
    get_json,
    http_file_server,
    log,
    operator_chart_args,
    operator_pods,
    pod_ready,
    wait_until,
)

# --------------------------------------------------------------------------- the node


@dataclass
class RealNode:
    node: dict[str, Any]
    images: set[str]
    cordoned: list[str] = field(default_factory=list)
    untainted: list[dict[str, Any]] = field(default_factory=list)


def _node_images(node: dict[str, Any]) -> set[str]:
    return {
        name for image in (node.get("status") or {}).get("images") or [] for name in image.get("names") or []
    }


NODE_IMAGES_WAIT_S = 120


@pytest.fixture(scope="module")
def real_node(cluster: Any) -> Iterator[RealNode]:
    """The real node, Ready, with our images; kwok nodes cordoned and the GPU taint lifted meanwhile."""
    kubectl: Kubectl = cluster.kubectl
    proc = kubectl("get", "node", NODE, "-o", "json", check=False)
    if proc.returncode != 0:
        if os.environ.get("ZTHUMB_REAL_NODE") == "0":
            pytest.skip("ZTHUMB_REAL_NODE=0: the cluster was started without the real node")
        pytest.fail(
            f"node {NODE} is missing, so nothing here can run for real: start the local cluster "
            "WITH its real node (`hack/cluster/cluster.sh up` as root; see hack/cluster/README-cluster.md). "
            f"kubectl said: {proc.stderr.strip()}",
            pytrace=False,
        )
    node = json.loads(proc.stdout)
    ready = {c["type"]: c["status"] for c in node["status"].get("conditions") or []}.get("Ready")
    if ready != "True":
        pytest.fail(
            f"node {NODE} is not Ready ({ready}): see the kubelet log under the cluster dir", pytrace=False
        )
    # The kubelet lists a node's images in its status from a cache it refreshes every few tens of
    # seconds: images imported just before the tests (a fresh node store) show up a little later.
    deadline = time.monotonic() + NODE_IMAGES_WAIT_S
    while True:
        images = _node_images(node)
        missing = [image for image in IMAGES if image not in images]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
        node = json.loads(kubectl("get", "node", NODE, "-o", "json").stdout)
    if missing:
        pytest.fail(
            f"node {NODE} lacks the images {missing}: build and import them with "
            f"`hack/images/build-images.sh` (it needs the cluster up). The node has: {sorted(images)}",
            pytrace=False,
        )

    state = RealNode(node=node, images=images)
    try:
        for other in get_json(kubectl, "nodes")["items"]:
            meta = other["metadata"]
            if meta["name"] == NODE:
                continue
            fake = (meta.get("annotations") or {}).get("kwok.x-k8s.io/node") == "fake"
            if fake and not other["spec"].get("unschedulable"):
                kubectl("cordon", meta["name"])
                state.cordoned.append(meta["name"])
        for taint in node["spec"].get("taints") or []:
            if taint["key"] == GPU_TAINT:
                kubectl("taint", "node", NODE, f"{GPU_TAINT}:{taint['effect']}-")
                state.untainted.append(taint)
        log(f"cordoned {state.cordoned}; lifted taints {state.untainted} of {NODE}")
        yield state
    finally:
        for name in state.cordoned:
            kubectl("uncordon", name, check=False)
        for taint in state.untainted:
            value = f"={taint['value']}" if taint.get("value") else ""
            kubectl(
                "taint", "node", NODE, f"{taint['key']}{value}:{taint['effect']}", "--overwrite", check=False
            )


# --------------------------------------------------------------------------- namespace + operator


@pytest.fixture(scope="module")
def real_ns(real_node: RealNode, cluster: Any) -> Iterator[str]:
    """One namespace enforcing Pod Security ``restricted`` for the whole package."""
    kubectl: Kubectl = cluster.kubectl
    name = f"real-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    kubectl(
        "label", "namespace", name,
        "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/enforce-version=latest",
    )  # fmt: skip
    wait_until(
        lambda: kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
        30,
        f"default ServiceAccount in {name}",
        1,
    )
    try:
        yield name
    finally:
        if os.environ.get("ZTHUMB_REAL_KEEP") == "1":
            log(f"ZTHUMB_REAL_KEEP=1: namespace {name} kept for inspection")
        else:
            kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def operator(real_ns: str, cluster: Any) -> Iterator[str]:
    """The operator from its chart (cluster-wide), running as a real pod; yields its namespace.

    The train pod's ServiceAccount, Role and RoleBinding are the operator's to create, per run.
    """
    kubectl: Kubectl = cluster.kubectl
    kubectl("apply", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "crd/lorafinetunes.zthumb.io", "--timeout=60s", timeout=90)
    kubectl("apply", "-f", str(OPERATOR_NAMESPACE))
    try:
        cluster.helm(
            "upgrade", "--install", OPERATOR_RELEASE, str(OPERATOR_CHART), "-n", OPERATOR_NS,
            *operator_chart_args(), timeout=120,
        )  # fmt: skip
        kubectl(
            "rollout",
            "status",
            "deployment/zthumb-operator",
            "-n",
            OPERATOR_NS,
            "--timeout=180s",
            timeout=200,
        )
        # The chart's own check: the CRD is served and the operator answers through its Service.
        test = cluster.helm(
            "test", OPERATOR_RELEASE, "-n", OPERATOR_NS, "--logs", "--timeout", "120s", timeout=180
        )
        log(f"operator helm test: {test.stdout.strip().splitlines()[-1] if test.stdout.strip() else ''}")
        yield OPERATOR_NS
    finally:
        if os.environ.get("ZTHUMB_REAL_KEEP") != "1":
            cluster.helm("uninstall", OPERATOR_RELEASE, "-n", OPERATOR_NS, "--ignore-not-found", check=False)
            # A cluster-wide operator still shutting down must not act on the kwok tests' runs.
            wait_until(lambda: not operator_pods(kubectl), 120, "the operator pods to be gone", 1)


# --------------------------------------------------------------------------- the tiny model over HTTP


@pytest.fixture(scope="module")
def tiny_model_server(real_ns: str, real_node: RealNode, cluster: Any) -> ModelServer:
    """A pod of the trainer image builds the tiny SDXL (``zthumb-train tiny-model``) and serves it.

    Layout as ``local.run.with_tiny_model`` expects: ``<url>/tiny_sdxl.safetensors`` and the
    diffusers config files under ``<url>/diffusers/``. The SHA256 is computed in the pod.
    """
    kubectl: Kubectl = cluster.kubectl
    script = (
        "zthumb-train tiny-model /srv/tiny && cd /srv/tiny && exec python3 -m http.server 8000 --bind 0.0.0.0"
    )
    items = http_file_server("tiny-model", script, env={"HF_HOME": "/tmp/hf"})
    kubectl(
        "apply",
        "-n",
        real_ns,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
    )
    started = time.monotonic()
    wait_until(
        lambda: pod_ready(get_json(kubectl, "pod", "tiny-model", "-n", real_ns)),
        300,
        "the tiny model pod Ready",
        2,
    )
    log(f"tiny model built and served in {time.monotonic() - started:.0f}s")
    out = kubectl(
        "exec", "-n", real_ns, "tiny-model", "--", "sha256sum", "/srv/tiny/tiny_sdxl.safetensors"
    ).stdout
    sha256 = out.split()[0]
    assert len(sha256) == 64, out
    clip = kubectl("exec", "-n", real_ns, "tiny-model", "--", "sha256sum", "/srv/tiny/tiny_clip.safetensors")
    clip_sha256 = clip.stdout.split()[0]
    assert_ran_on_real_node(get_json(kubectl, "pod", "tiny-model", "-n", real_ns))
    return ModelServer(
        url=f"http://tiny-model.{real_ns}.svc", sha256=sha256, pod="tiny-model", clip_sha256=clip_sha256
    )
