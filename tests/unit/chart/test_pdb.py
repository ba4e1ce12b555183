"""templates/pdb.yaml: a PodDisruptionBudget only where it can protect something (more than one
replica possible), with the budget the values ask for.

The tests that render run the real `helm` (chart_render.py): without it they skip locally and fail in CI.
"""

from __future__ import annotations

from typing import Any

import pytest
from chart_render import needs_helm, render


@needs_helm
@pytest.mark.parametrize(
    "values",
    [
        {},
        {"pdb.minAvailable": "1"},  # not rendered, so it blocks no drain
        {"autoscaling.enabled": "true", "autoscaling.maxReplicas": "1"},
        {
            "autoscaling.keda.enabled": "true",
            "autoscaling.maxReplicas": "1",
            "autoscaling.keda.serverAddress": "http://p:9090",
        },
    ],
    ids=["one-replica", "one-replica-min-available", "hpa-up-to-one", "keda-up-to-one"],
)
def test_no_disruption_budget_where_it_protects_nothing(
    helm_bin: list[str], helm_env: dict[str, str], values: dict[str, str]
) -> None:
    assert not render(helm_env, values, "--api-versions", "keda.sh/v1alpha1").has("PodDisruptionBudget")


@needs_helm
@pytest.mark.parametrize(
    ("values", "spec"),
    [
        ({"replicaCount": "2"}, {"maxUnavailable": 1}),
        ({"replicaCount": "3", "pdb.minAvailable": "2"}, {"minAvailable": 2}),
        ({"replicaCount": "3", "pdb.maxUnavailable": "50%"}, {"maxUnavailable": "50%"}),
        # Autoscaled from one replica up to four: it protects the ones above the first.
        ({"autoscaling.enabled": "true"}, {"maxUnavailable": 1}),
    ],
    ids=["two-replicas", "min-available", "percentage", "autoscaled"],
)
def test_a_disruption_budget_with_more_than_one_replica(
    helm_bin: list[str], helm_env: dict[str, str], values: dict[str, str], spec: dict[str, Any]
) -> None:
    pdb = render(helm_env, values).get("PodDisruptionBudget", "zthumb")
    selector = {"app.kubernetes.io/name": "zthumb", "app.kubernetes.io/instance": "zthumb"}
    assert pdb["spec"] == {**spec, "selector": {"matchLabels": selector}}
    assert not render(helm_env, {**values, "pdb.create": "false"}).has("PodDisruptionBudget")
