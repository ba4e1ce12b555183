"""charts/zthumb against the local control plane (hack/cluster/cluster.sh, hack/cluster/README-cluster.md).

Real kube-apiserver, controllers and scheduler, real helm and kubectl; kwok
plays the kubelet (pods on its fake GPU nodes go Running/Ready, nothing runs).

Proves: the rendered manifests pass server-side validation (and Pod Security
"restricted" admission), `helm install` schedules the server onto a GPU node,
the `helm test` pod is admitted with the right spec, `helm upgrade` keeps
the adapter the operator patched into the Deployment, and the API key the chart
generates survives upgrades, an uninstall and a reinstall (the `lookup` that
`helm template` cannot do).
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.steps import RunPaths, deploy_env
from zthumb_operator import deployments
from zthumb_operator.api import FIELD_MANAGER
from zthumb_operator.config import OperatorConfig

pytestmark = pytest.mark.e2e

CHART = Path(__file__).resolve().parents[2] / "charts" / "zthumb"
RELEASE = "zthumb"
ADAPTER = "/data/models/lora/z-style"

Run = Callable[..., subprocess.CompletedProcess[str]]


def get_json(kubectl: Run, *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def server_env(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "zthumb"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def set_args(values: dict[str, str]) -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        out += ["--set", f"{key}={value}"]
    return out


@pytest.fixture
def data_volume(kubectl: Run, namespace: str) -> Iterator[dict[str, str]]:
    """A static PV pre-bound to the chart's PVC `<release>-data`; yields the values that select it.

    The local control plane has no storage provisioner, so the chart's PVC
    binds to this PV through the PV controller (kube-controller-manager); kwok
    never mounts it.
    """
    name = f"zthumb-e2e-{namespace}"
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"zthumb.io/e2e": "chart"}},
        "spec": {
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": name,
            "hostPath": {"path": f"/tmp/{name}"},
            "claimRef": {"namespace": namespace, "name": f"{RELEASE}-data"},
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(pv))
    yield {"persistence.storageClass": name, "persistence.size": "10Gi"}
    kubectl("delete", "pv", name, "--wait=false", "--ignore-not-found", check=False)


def release(
    helm: Run, verb: str, namespace: str, values: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    """``helm install|upgrade`` of the chart, waiting (bounded) for the rollout."""
    return helm(
        verb,
        RELEASE,
        str(CHART),
        "--namespace",
        namespace,
        *set_args(values),
        "--wait",
        "--timeout",
        "120s",
        *extra,
        timeout=180,
    )


def install(
    helm: Run, namespace: str, values: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    return release(helm, "install", namespace, values, *extra)


def upgrade(helm: Run, namespace: str, values: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return release(helm, "upgrade", namespace, values)


def server_pods(kubectl: Run, namespace: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/name=zthumb,app.kubernetes.io/instance={RELEASE}"
    return get_json(kubectl, "pods", "-n", namespace, "-l", selector)["items"]


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return pod.get("status", {}).get("phase") == "Running" and conditions.get("Ready") == "True"


def patch_adapter_like_the_operator(kubectl: Run, namespace: str, run: str, scale: float) -> None:
    """The operator's deploy patch itself: run ``run``'s env (``deploy_env``) through the operator's
    strategic merge patch builder, under its field manager."""
    spec = LoRAFinetuneSpec.model_validate({"deploy": {"deployment": RELEASE, "loraScale": scale}})
    env = deploy_env(RunPaths(OperatorConfig().server_data_root, run, spec))
    patch = deployments.deployment_env_patch(spec.deploy.container, env)
    kubectl(
        "patch",
        "deployment",
        spec.deploy.deployment,
        "-n",
        namespace,
        "--type=strategic",
        "-p",
        json.dumps(patch),
        f"--field-manager={FIELD_MANAGER}",
    )


def api_key(kubectl: Run, namespace: str) -> str:
    """The key as NOTES.txt tells a user to read it."""
    out = kubectl(
        "get", "secret", f"{RELEASE}-api-key", "-n", namespace, "-o", "jsonpath={.data.api-key}"
    ).stdout
    return base64.b64decode(out).decode()


def wait_rolled_out(kubectl: Run, namespace: str) -> None:
    kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", namespace, "--timeout=90s", timeout=120)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
@pytest.mark.parametrize(
    "values",
    [
        {},
        {"gpu.enabled": "false"},
        {"persistence.create": "false", "persistence.existingClaim": "shared-data"},
        {
            "networkPolicy.enabled": "true",
            "auth.apiKey": "s3cret",
            "tests.generate.enabled": "true",
            "updateStrategy.type": "Recreate",
            "lora.path": "z-style",
        },
    ],
    ids=["default", "cpu", "existing-claim", "options"],
)
def test_rendered_manifests_pass_server_side_dry_run(
    helm: Run, kubectl: Run, cluster: Any, namespace: str, values: dict[str, str]
) -> None:
    # The server validates every field against its OpenAPI schema and runs
    # admission (Pod Security "restricted" for the pods) without persisting.
    # `helm template` assumes Kubernetes v1.20 unless told (kubeVersion is >=1.28).
    rendered = helm(
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        cluster.server_version,
        *set_args(values),
    ).stdout
    out = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=rendered).stdout
    assert f"deployment.apps/{RELEASE} created (server dry run)" in out
    assert f"service/{RELEASE} created (server dry run)" in out
    assert f"pod/{RELEASE}-test-connection created (server dry run)" in out


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_install_in_restricted_namespace_schedules_on_gpu_node(
    helm: Run, kubectl: Run, namespace: str, data_volume: dict[str, str], wait_until: Callable[..., Any]
) -> None:
    out = install(helm, namespace, data_volume).stdout
    assert f"http://{RELEASE}.{namespace}.svc:8080/generate" in out  # NOTES.txt

    pvc = get_json(kubectl, "pvc", f"{RELEASE}-data", "-n", namespace)
    assert pvc["status"]["phase"] == "Bound"

    deployment = get_json(kubectl, "deployment", RELEASE, "-n", namespace)
    assert deployment["status"].get("availableReplicas") == 1
    service = get_json(kubectl, "service", RELEASE, "-n", namespace)
    assert service["spec"]["ports"][0]["name"] == "http"
    assert service["spec"]["ports"][0]["port"] == 8080

    pod = wait_until(
        lambda: next((p for p in server_pods(kubectl, namespace) if is_ready(p)), None),
        timeout=60,
        description="a Ready server pod",
    )
    node = get_json(kubectl, "node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"].get("zthumb.io/pool") == "gpu", pod["spec"]["nodeName"]
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"

    # The Service routes to the pod: the operator's eval Jobs and `helm test` rely on it.
    endpoints = wait_until(
        lambda: get_json(
            kubectl, "endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={RELEASE}"
        )["items"],
        timeout=30,
        description="EndpointSlices of the Service",
    )
    addresses = [a for s in endpoints for e in s.get("endpoints") or [] for a in e["addresses"]]
    assert pod["status"]["podIP"] in addresses


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_helm_test_pod_is_created_with_the_right_spec(
    kubectl: Run,
    cluster: Any,
    namespace: str,
    data_volume: dict[str, str],
    wait_until: Callable[..., Any],
) -> None:
    install(cluster.helm, namespace, data_volume)
    test_pod = f"{RELEASE}-test-connection"
    # kwok never runs the curl container, so the pod stays Running forever; we
    # play the kubelet and report the outcome once the spec is checked.
    proc = subprocess.Popen(
        ["helm", "test", RELEASE, "--namespace", namespace, "--timeout", "90s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cluster.helm_env,
    )
    try:
        pod = wait_until(
            lambda: get_json(kubectl, "pod", test_pod, "-n", namespace),
            timeout=60,
            description="the helm test pod",
        )
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        assert "app.kubernetes.io/name" not in pod["metadata"]["labels"]
        (container,) = pod["spec"]["containers"]
        assert container["image"].startswith("docker.io/curlimages/curl:")
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["ZTHUMB_HOST"] == f"{RELEASE}.{namespace}.svc"
        assert env["ZTHUMB_PORT"] == "8080"
        assert "/readyz" in container["args"][0]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["spec"]["restartPolicy"] == "Never"
        # Admitted by Pod Security "restricted" and scheduled (no GPU: any node).
        wait_until(
            lambda: get_json(kubectl, "pod", test_pod, "-n", namespace)["status"].get("phase") == "Running",
            timeout=60,
            description="the helm test pod Running",
        )
        kubectl(
            "patch",
            "pod",
            test_pod,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": {"phase": "Succeeded"}}),
        )
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"helm test failed\n{stdout}\n{stderr}"
    assert "Phase:          Succeeded" in stdout or "Succeeded" in stdout


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_helm_upgrade_keeps_the_adapter_the_operator_patched_in(
    helm: Run, kubectl: Run, namespace: str, data_volume: dict[str, str]
) -> None:
    install(helm, namespace, data_volume)
    patch_adapter_like_the_operator(kubectl, namespace, "z-style", 0.8)
    wait_rolled_out(kubectl, namespace)
    patched = get_json(kubectl, "deployment", RELEASE, "-n", namespace)
    assert server_env(patched)["Z_LORA_PATH"] == ADAPTER

    key = api_key(kubectl, namespace)

    # 1. Unchanged values: nothing to change, the operator's adapter stays (and the generated
    #    API key: a new one would be a change).
    upgrade(helm, namespace, data_volume)
    after = get_json(kubectl, "deployment", RELEASE, "-n", namespace)
    env = server_env(after)
    assert env["Z_LORA_PATH"] == ADAPTER
    assert env["Z_LORA_SCALE"] == "0.8"
    # No rollout back to the base model either.
    assert after["metadata"]["generation"] == patched["metadata"]["generation"]

    # 2. A real upgrade that changes the pod template: still kept (three-way merge
    #    only removes env entries the previous release rendered).
    upgrade(helm, namespace, {**data_volume, "lora.cacheSize": "4"})
    after = get_json(kubectl, "deployment", RELEASE, "-n", namespace)
    env = server_env(after)
    assert env["ZTHUMB_LORA_CACHE_SIZE"] == "4"
    assert env["Z_LORA_PATH"] == ADAPTER
    assert api_key(kubectl, namespace) == key
    assert env["Z_LORA_SCALE"] == "0.8"
    assert after["metadata"]["generation"] > patched["metadata"]["generation"]
    wait_rolled_out(kubectl, namespace)
    pods = server_pods(kubectl, namespace)
    assert pods
    assert all(server_env({"spec": {"template": p}})["Z_LORA_PATH"] == ADAPTER for p in pods)

    # 3. The operator rolls on to the next adapter; helm history is untouched by it.
    patch_adapter_like_the_operator(kubectl, namespace, "z-style-v2", 0.7)
    upgrade(helm, namespace, {**data_volume, "lora.cacheSize": "4"})
    env = server_env(get_json(kubectl, "deployment", RELEASE, "-n", namespace))
    assert env["Z_LORA_PATH"] == "/data/models/lora/z-style-v2"
    assert env["Z_LORA_SCALE"] == "0.7"


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_explicit_lora_path_value_is_owned_by_helm(
    helm: Run, kubectl: Run, namespace: str, data_volume: dict[str, str]
) -> None:
    """The other side of the contract: a chart-rendered Z_LORA_PATH wins on upgrade.

    This is why the chart renders nothing for the adapter by default.
    """
    values = {**data_volume, "lora.path": "pinned"}
    install(helm, namespace, values)
    patch_adapter_like_the_operator(kubectl, namespace, "z-style", 0.8)
    assert server_env(get_json(kubectl, "deployment", RELEASE, "-n", namespace))["Z_LORA_PATH"] == ADAPTER
    upgrade(helm, namespace, values)
    env = server_env(get_json(kubectl, "deployment", RELEASE, "-n", namespace))
    assert env["Z_LORA_PATH"] == "/data/models/lora/pinned"


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_the_generated_api_key_survives_upgrade_uninstall_and_reinstall(
    helm: Run, kubectl: Run, namespace: str, data_volume: dict[str, str]
) -> None:
    out = install(helm, namespace, data_volume).stdout
    key = api_key(kubectl, namespace)
    assert len(key) == 48 and key.isalnum()
    assert f"get secret {RELEASE}-api-key -o jsonpath='{{.data.api-key}}' | base64 -d" in out  # NOTES.txt
    assert key not in out
    ref = {"secretKeyRef": {"name": f"{RELEASE}-api-key", "key": "api-key"}}
    assert server_env(get_json(kubectl, "deployment", RELEASE, "-n", namespace))["ZTHUMB_API_KEY"] == ref
    policy = get_json(kubectl, "networkpolicy", RELEASE, "-n", namespace)
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {}}]

    upgrade(helm, namespace, {**data_volume, "lora.cacheSize": "4"})
    assert api_key(kubectl, namespace) == key

    # helm.sh/resource-policy: keep leaves the Secret; the reinstall adopts it and keeps its key.
    helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "120s", timeout=180)
    assert api_key(kubectl, namespace) == key
    install(helm, namespace, data_volume)
    assert api_key(kubectl, namespace) == key
    assert server_env(get_json(kubectl, "deployment", RELEASE, "-n", namespace))["ZTHUMB_API_KEY"] == ref

    # An explicit key replaces the generated one; it is what the Secret then holds.
    upgrade(helm, namespace, {**data_volume, "auth.apiKey": "rotated-by-hand"})
    assert api_key(kubectl, namespace) == "rotated-by-hand"
