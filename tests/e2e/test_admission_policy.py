"""The ValidatingAdmissionPolicy of manifests/operator/admission/ on the local control plane:
``kubectl apply --dry-run=server`` of a LoRAFinetune that uses what the params refuse is refused,
naming the spec field.

The policy is the shipped one; its binding is the shipped one narrowed to the test's namespace (a
namespaceSelector) with the params ConfigMap in that namespace, so that runs of other tests on the
same cluster are never judged by it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from operator_harness import ROOT, Kubectl, example

pytestmark = pytest.mark.e2e

ADMISSION = ROOT / "manifests" / "operator" / "admission"
POLICY_TIMEOUT = 60  # the API server picks up policies, bindings and params asynchronously


def dry_run(kubectl: Kubectl, manifest: str) -> Any:
    return kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)


def policy_status(kubectl: Kubectl, name: str) -> dict[str, Any]:
    return (
        json.loads(kubectl("get", "validatingadmissionpolicy", name, "-o", "json").stdout).get("status") or {}
    )


@pytest.fixture
def run_policy(crd: None, namespace: str, kubectl: Kubectl, wait_for: Callable[..., Any]) -> Iterator[str]:
    """The shipped policy bound to ``namespace`` with the shipped params; yields the namespace."""
    policy = yaml.safe_load((ADMISSION / "policy.yaml").read_text())
    params = yaml.safe_load((ADMISSION / "params.yaml").read_text())
    params["metadata"]["namespace"] = namespace
    binding = yaml.safe_load((ADMISSION / "binding.yaml").read_text())
    binding["metadata"]["name"] = f"zthumb-run-policy-{namespace}"
    binding["spec"]["paramRef"]["namespace"] = namespace
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    }
    kubectl("apply", "-f", "-", input=json.dumps(policy))
    kubectl("apply", "-f", "-", input=json.dumps(params))
    kubectl("apply", "-f", "-", input=json.dumps(binding))
    try:
        # The expressions type-check against the CRD's schema and the ConfigMap's.
        wait_for(
            lambda: policy_status(kubectl, policy["metadata"]["name"]).get("observedGeneration"),
            timeout=POLICY_TIMEOUT,
            description="the policy's type check",
        )
        checked = policy_status(kubectl, policy["metadata"]["name"])
        assert not (checked.get("typeChecking") or {}).get("expressionWarnings"), checked
        bad = example(namespace, images={"trainer": "evil.example/trainer:1"})
        wait_for(
            lambda: dry_run(kubectl, bad).returncode != 0, timeout=POLICY_TIMEOUT, description="the binding"
        )
        yield namespace
    finally:
        kubectl("delete", "-f", "-", "--ignore-not-found", input=json.dumps(binding), check=False)
        kubectl("delete", "-f", "-", "--ignore-not-found", input=json.dumps(policy), check=False)


def test_a_trainer_image_outside_the_allowed_prefixes_is_refused(run_policy: str, kubectl: Kubectl) -> None:
    ns = run_policy
    refused = dry_run(kubectl, example(ns, images={"trainer": "ghcr.io/zthumb-evil/trainer:1"}))
    assert refused.returncode != 0
    assert "spec.images.trainer: image ghcr.io/zthumb-evil/trainer:1 is not allowed here" in refused.stderr
    assert "ghcr.io/zthumb/trainer:" in refused.stderr, refused.stderr
    for allowed in (example(ns), example(ns, images={"trainer": "ghcr.io/zthumb/trainer:0.2.0"})):
        ok = dry_run(kubectl, allowed)
        assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    ("toleration", "shown"),
    [
        (
            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"},
            "node-role.kubernetes.io/control-plane",
        ),
        ({"operator": "Exists"}, "'' (every taint)"),
    ],
)
def test_a_toleration_key_outside_the_allowed_ones_is_refused(
    run_policy: str, kubectl: Kubectl, toleration: dict[str, Any], shown: str
) -> None:
    ns = run_policy
    refused = dry_run(kubectl, example(ns, resources__tolerations=[toleration]))
    assert refused.returncode != 0
    assert f"spec.resources.tolerations: key(s) {shown} not allowed here" in refused.stderr, refused.stderr
    gpu = dry_run(
        kubectl, example(ns, resources__tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}])
    )
    assert gpu.returncode == 0, gpu.stderr


def test_node_selector_keys_follow_the_params(
    run_policy: str, kubectl: Kubectl, wait_for: Callable[..., Any]
) -> None:
    ns = run_policy
    pinned = example(ns, resources__nodeSelector={"kubernetes.io/hostname": "node-1"})
    assert dry_run(kubectl, pinned).returncode == 0  # the shipped params allow any key
    kubectl("patch", "configmap", "zthumb-run-policy", "-n", ns, "--type=merge",
            "-p", '{"data":{"nodeSelectorKeys":"zthumb.io/pool"}}')  # fmt: skip
    wait_for(
        lambda: dry_run(kubectl, pinned).returncode != 0, timeout=POLICY_TIMEOUT, description="new params"
    )
    refused = dry_run(kubectl, pinned)
    assert "spec.resources.nodeSelector: key(s) kubernetes.io/hostname not allowed here" in refused.stderr
    assert "(allowed keys: zthumb.io/pool)" in refused.stderr, refused.stderr
    ok = dry_run(kubectl, example(ns))  # the example selects zthumb.io/pool only
    assert ok.returncode == 0, ok.stderr


def test_without_its_params_the_binding_refuses_every_run(
    run_policy: str, kubectl: Kubectl, wait_for: Callable[..., Any]
) -> None:
    ns = run_policy
    kubectl("delete", "configmap", "zthumb-run-policy", "-n", ns)
    wait_for(
        lambda: dry_run(kubectl, example(ns)).returncode != 0,
        timeout=POLICY_TIMEOUT,
        description="a run refused without params",
    )
