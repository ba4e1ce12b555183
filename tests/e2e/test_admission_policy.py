"""The ValidatingAdmissionPolicy of manifests/operator/admission/ on the local control plane:
``kubectl apply --dry-run=server`` of a LoRAFinetune that uses what the policy's lists refuse is
refused, naming the spec field.

Each test applies the shipped policy and binding under a name of its own, the binding narrowed to
the test's namespace (a namespaceSelector), so that runs of other tests on the same cluster are
never judged by it.
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
POLICY_TIMEOUT = 60  # the API server picks up policies and bindings asynchronously

BindPolicy = Callable[..., str]


def dry_run(kubectl: Kubectl, manifest: str) -> Any:
    return kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)


def policy_status(kubectl: Kubectl, name: str) -> dict[str, Any]:
    return (
        json.loads(kubectl("get", "validatingadmissionpolicy", name, "-o", "json").stdout).get("status") or {}
    )


@pytest.fixture
def bind_policy(
    crd: None, namespace: str, kubectl: Kubectl, wait_until: Callable[..., Any]
) -> Iterator[BindPolicy]:
    """``bind_policy(**lists)``: the shipped policy, its allowed lists (variables) replaced by
    ``lists`` (CEL list literals), bound to ``namespace``; returns the namespace."""
    name = f"zthumb-run-policy-{namespace}"
    binding = yaml.safe_load((ADMISSION / "binding.yaml").read_text())
    binding["metadata"]["name"] = binding["spec"]["policyName"] = name
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    }
    applied: list[dict[str, Any]] = []

    def bind(**lists: str) -> str:
        policy = yaml.safe_load((ADMISSION / "policy.yaml").read_text())
        policy["metadata"]["name"] = name
        for variable in policy["spec"]["variables"]:
            variable["expression"] = lists.pop(variable["name"], variable["expression"])
        assert not lists, f"no such variables: {lists}"
        kubectl("apply", "-f", "-", input=json.dumps(policy))
        kubectl("apply", "-f", "-", input=json.dumps(binding))
        applied[:] = [binding, policy]
        # The expressions type-check against the CRD's schema (the API server's own verdict).
        generation = json.loads(kubectl("get", "validatingadmissionpolicy", name, "-o", "json").stdout)[
            "metadata"
        ]["generation"]
        wait_until(
            lambda: policy_status(kubectl, name).get("observedGeneration") == generation,
            timeout=POLICY_TIMEOUT,
            description="the policy's type check",
        )
        status = policy_status(kubectl, name)
        assert not (status.get("typeChecking") or {}).get("expressionWarnings"), status
        # In force: a run with an image no list allows is refused, naming the field.
        bad = example(namespace, images={"trainer": "evil.example/trainer:1"})
        wait_until(
            lambda: "spec.images.trainer" in dry_run(kubectl, bad).stderr,
            timeout=POLICY_TIMEOUT,
            description="the binding",
        )
        return namespace

    yield bind
    for obj in applied:
        kubectl("delete", "-f", "-", "--ignore-not-found", input=json.dumps(obj), check=False)


def test_a_trainer_image_outside_the_allowed_prefixes_is_refused(
    bind_policy: BindPolicy, kubectl: Kubectl
) -> None:
    ns = bind_policy()
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
    bind_policy: BindPolicy, kubectl: Kubectl, toleration: dict[str, Any], shown: str
) -> None:
    ns = bind_policy()
    refused = dry_run(kubectl, example(ns, resources__tolerations=[toleration]))
    assert refused.returncode != 0
    assert f"spec.resources.tolerations: key(s) {shown} not allowed here" in refused.stderr, refused.stderr
    gpu = dry_run(
        kubectl, example(ns, resources__tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}])
    )
    assert gpu.returncode == 0, gpu.stderr


def test_node_selector_keys_follow_the_policys_list(
    bind_policy: BindPolicy, kubectl: Kubectl, wait_until: Callable[..., Any]
) -> None:
    ns = bind_policy()
    pinned = example(ns, resources__nodeSelector={"kubernetes.io/hostname": "node-1"})
    assert dry_run(kubectl, pinned).returncode == 0  # the shipped list allows any key
    bind_policy(allowedNodeSelectorKeys="['zthumb.io/pool']")
    wait_until(
        lambda: dry_run(kubectl, pinned).returncode != 0, timeout=POLICY_TIMEOUT, description="new list"
    )
    refused = dry_run(kubectl, pinned)
    assert refused.returncode != 0
    assert "spec.resources.nodeSelector: key(s) kubernetes.io/hostname not allowed here" in refused.stderr
    assert "(allowed keys: zthumb.io/pool)" in refused.stderr, refused.stderr
    ok = dry_run(kubectl, example(ns))  # the example selects zthumb.io/pool only
    assert ok.returncode == 0, ok.stderr


def test_an_empty_list_allows_no_image_of_the_runs_choosing(
    bind_policy: BindPolicy, kubectl: Kubectl
) -> None:
    ns = bind_policy(allowedTrainerImagePrefixes="[]")
    refused = dry_run(kubectl, example(ns, images={"trainer": "ghcr.io/zthumb/trainer:0.1.0"}))
    assert refused.returncode != 0 and "(allowed prefixes: none)" in refused.stderr, refused.stderr
    ok = dry_run(kubectl, example(ns))
    assert ok.returncode == 0, ok.stderr
