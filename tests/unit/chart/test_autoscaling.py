"""templates/hpa.yaml and scaledobject.yaml: the optional HorizontalPodAutoscaler or KEDA
ScaledObject on the server's queue depth, their values and refusals, and the operator's rollout
reaching every replica they make.

The tests that render run the real `helm` (chart_render.py): without it they skip locally and fail in CI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chart_render import CHART, helm, needs_helm, render, render_fails, render_notes, set_args

KEDA_API = ("--api-versions", "keda.sh/v1alpha1")


@needs_helm
def test_autoscaling_is_off_by_default(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    r = render(helm_env)
    assert not r.has("HorizontalPodAutoscaler")
    assert not r.has("ScaledObject")
    assert r.deployment["spec"]["replicas"] == 1
    # Even where KEDA is installed, nothing is rendered unless asked for.
    assert not render(helm_env, None, *KEDA_API).has("ScaledObject")


@needs_helm
def test_hpa_scales_on_the_queue_depth_pods_metric(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    default = render(helm_env)
    r = render(helm_env, {"autoscaling.enabled": "true"})
    hpa = r.get("HorizontalPodAutoscaler", "zthumb")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["metadata"]["namespace"] == "ml"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "zthumb"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "zthumb_queue_depth"},
                "target": {"type": "AverageValue", "averageValue": "2"},
            },
        }
    ]
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300  # a new replica pays a model load
    # The HPA owns the replica count: `helm upgrade` must not reset it.
    assert "replicas" not in r.deployment["spec"]
    # Every replica gets the same pod template: its own adapter cache, the same env the operator patches.
    assert r.deployment["spec"]["template"] == default.deployment["spec"]["template"]
    assert r.env["ZTHUMB_LORA_CACHE_SIZE"] == "8"
    assert not r.has("ScaledObject")


@needs_helm
def test_hpa_values(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 60, "selectPolicy": "Disabled"}}
    r = render(
        helm_env,
        {
            "autoscaling.enabled": "true",
            "autoscaling.minReplicas": "2",
            "autoscaling.maxReplicas": "10",
            "autoscaling.targetQueueDepth": "0.5",
            "autoscaling.metricName": "zthumb_queue_depth_avg",
        },
        "--set-json",
        f"autoscaling.behavior={json.dumps(behavior)}",
        release="prod",
    )
    hpa = r.get("HorizontalPodAutoscaler", "prod-zthumb")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "prod-zthumb"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    pods = hpa["spec"]["metrics"][0]["pods"]
    assert pods == {
        "metric": {"name": "zthumb_queue_depth_avg"},
        "target": {"type": "AverageValue", "averageValue": "0.5"},
    }
    # Helm merges maps with the defaults: the policies stay unless replaced.
    assert behavior["scaleDown"].items() <= hpa["spec"]["behavior"]["scaleDown"].items()
    assert hpa["spec"]["behavior"]["scaleDown"]["policies"] == [
        {"type": "Pods", "value": 1, "periodSeconds": 120}
    ]
    # A raised queue bound allows a deeper target.
    r = render(
        helm_env,
        {"autoscaling.enabled": "true", "autoscaling.targetQueueDepth": "12"},
        "--set-json",
        'server.extraEnv=[{"name":"ZTHUMB_MAX_QUEUE","value":"16"}]',
    )
    assert r.get("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "12"


@needs_helm
def test_keda_scaled_object(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    values = {
        "autoscaling.keda.enabled": "true",
        "autoscaling.keda.serverAddress": "http://prometheus-operated.monitoring.svc:9090",
        "autoscaling.maxReplicas": "6",
    }
    r = render(helm_env, values, *KEDA_API)
    so = r.get("ScaledObject", "zthumb")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "zthumb"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 6)
    assert (spec["pollingInterval"], spec["cooldownPeriod"]) == (15, 300)
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"]["policies"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {
        "serverAddress": "http://prometheus-operated.monitoring.svc:9090",
        "query": 'sum(zthumb_queue_depth{namespace="ml",pod=~"zthumb-[a-z0-9]+-[a-z0-9]+"})',
        "threshold": "2",
    }
    assert "replicas" not in r.deployment["spec"]
    assert not r.has("HorizontalPodAutoscaler")  # KEDA makes its own

    query = 'sum(zthumb_queue_depth{job="zthumb"})'
    r = render(helm_env, {**values, "autoscaling.keda.query": query}, *KEDA_API)
    assert r.get("ScaledObject")["spec"]["triggers"][0]["metadata"]["query"] == query


@needs_helm
@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {
                "autoscaling.enabled": "true",
                "autoscaling.keda.enabled": "true",
                "autoscaling.keda.serverAddress": "http://p:9090",
            },
            "autoscaling.enabled and autoscaling.keda.enabled are both true",
        ),
        (
            {"autoscaling.enabled": "true", "autoscaling.minReplicas": "5"},
            "autoscaling.minReplicas=5 is above autoscaling.maxReplicas=4",
        ),
        ({"autoscaling.enabled": "true", "replicaCount": "3"}, "replicaCount=3 is ignored while autoscaling"),
        (
            {"autoscaling.enabled": "true", "autoscaling.targetQueueDepth": "8"},
            "is not below the server's queue bound ZTHUMB_MAX_QUEUE=8",
        ),
        (
            {"autoscaling.enabled": "true", "updateStrategy.type": "Recreate"},
            "updateStrategy.type=Recreate with autoscaling.maxReplicas=4",
        ),
        (
            {"autoscaling.enabled": "true", "pdb.minAvailable": "1"},
            "pdb.minAvailable=1 is not below autoscaling.minReplicas=1",
        ),
        ({"autoscaling.keda.enabled": "true"}, "needs autoscaling.keda.serverAddress"),
        (
            {"autoscaling.keda.enabled": "true", "autoscaling.keda.serverAddress": "http://p:9090"},
            "no keda.sh/v1alpha1 API",
        ),
    ],
)
def test_autoscaling_contradictions_are_refused(
    helm_bin: list[str], helm_env: dict[str, str], values: dict[str, str], message: str
) -> None:
    stderr = render_fails(helm_env, values)
    assert "VALUES VALIDATION" in stderr, stderr
    assert message in stderr, stderr


@needs_helm
def test_queue_bound_from_extra_env_is_checked(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    stderr = render_fails(
        helm_env,
        {"autoscaling.enabled": "true"},
        "--set-json",
        'server.extraEnv=[{"name":"ZTHUMB_MAX_QUEUE","value":"2"}]',
    )
    assert "autoscaling.targetQueueDepth=2 is not below the server's queue bound ZTHUMB_MAX_QUEUE=2" in stderr


@needs_helm
@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"autoscaling.minReplicas": "0"}, "minReplicas"),
        ({"autoscaling.targetQueueDepth": "0"}, "targetQueueDepth"),
        ({"autoscaling.targetQueueDepth": "many"}, "targetQueueDepth"),
        ({"autoscaling.metricName": "queue-depth"}, "metricName"),
        ({"autoscaling.keda.serverAddress": "prometheus:9090"}, "serverAddress"),
        ({"autoscaling.behavior.scaleUp.policies[0].type": "Replicas"}, "type"),
        ({"autoscaling.enable": "true"}, "enable"),
    ],
)
def test_autoscaling_schema_refuses_bad_values(
    helm_bin: list[str], helm_env: dict[str, str], values: dict[str, str], named: str
) -> None:
    stderr = render_fails(helm_env, values)
    assert "schema" in stderr.lower(), stderr
    assert named in stderr, stderr


@needs_helm
def test_helm_lint_strict_autoscaling(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    # (`helm lint` has no --api-versions: the KEDA variant is covered by the render tests.)
    helm(helm_env, "lint", "--strict", str(CHART), *set_args({"autoscaling.enabled": "true"}))


def test_operator_rollout_reaches_every_autoscaled_replica() -> None:
    """The operator patches the pod template only (never spec.replicas, which the HPA owns), and it
    waits for the live replica count, whatever the HPA made it."""
    from zthumb_operator.deployments import deployment_env_patch, rollout_progress

    patch = deployment_env_patch(
        "zthumb", {"Z_LORA_PATH": "run-1", "Z_LORA_SCALE": "0.8"}, lock_owner="run-1"
    )
    assert set(patch["spec"]) == {"template"}

    def deployment(updated: int, available: int, total: int) -> dict[str, Any]:
        return {
            "spec": {"replicas": 3},  # set by the HPA through the scale subresource
            "status": {
                "observedGeneration": 2,
                "updatedReplicas": updated,
                "availableReplicas": available,
                "replicas": total,
            },
        }

    assert not rollout_progress(deployment(1, 3, 4), 2).done
    assert not rollout_progress(deployment(3, 3, 4), 2).done  # an old replica still serves the old adapter
    assert rollout_progress(deployment(3, 3, 3), 2).done


@needs_helm
def test_notes_name_the_autoscaler(helm_bin: list[str], helm_env: dict[str, str], tmp_path: Path) -> None:
    assert "Autoscaling" not in render_notes(helm_env, tmp_path)
    notes = render_notes(helm_env, tmp_path, {"autoscaling.enabled": "true"})
    assert "HorizontalPodAutoscaler/zthumb keeps 1-4 replicas at 2 waiting requests per pod" in notes
    assert "kubectl -n ml describe hpa zthumb" in notes
    assert "prometheus-adapter" in notes
