"""The server Deployment as the deploy stage reads and patches it: the target container's env, the
env patch and the rollout lock, and how far a rollout has got (like ``kubectl rollout status``)."""

from __future__ import annotations

from typing import Any

import pytest
from zthumb_operator import deployments

DEPLOYMENT: dict[str, Any] = {
    "metadata": {"name": "zthumb", "generation": 3, "resourceVersion": "10", "annotations": {}},
    "spec": {
        "replicas": 2,
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "zthumb",
                        "env": [
                            {"name": "ZTHUMB_BACKEND", "value": "full"},
                            {"name": "Z_LORA_PATH", "value": "/data/models/lora/old"},
                        ],
                    },
                    {"name": "sidecar", "env": [{"name": "Z_LORA_PATH", "value": "nope"}]},
                ]
            }
        },
    },
}


def test_env_values_of_the_target_container_only() -> None:
    assert deployments.lora_env_values(DEPLOYMENT, "zthumb") == {"Z_LORA_PATH": "/data/models/lora/old"}
    assert deployments.container_env(DEPLOYMENT, "missing") is None


def test_deployment_patch_sets_and_deletes_env_by_name() -> None:
    patch = deployments.deployment_env_patch(
        "zthumb", {"Z_LORA_PATH": "/data/models/lora/z", "Z_LORA_SCALE": None}
    )
    assert patch == {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "zthumb",
                            "env": [
                                {"name": "Z_LORA_PATH", "value": "/data/models/lora/z"},
                                {"name": "Z_LORA_SCALE", "$patch": "delete"},
                            ],
                        }
                    ]
                }
            }
        }
    }


def test_lock_patch_is_conditional() -> None:
    patch = deployments.deployment_env_patch("zthumb", {}, lock_owner="run-a", resource_version="10")
    assert patch == {
        "metadata": {"annotations": {deployments.ROLLOUT_OWNER_ANNOTATION: "run-a"}, "resourceVersion": "10"}
    }
    release = deployments.deployment_env_patch("zthumb", {}, lock_owner=None)
    assert release == {"metadata": {"annotations": {deployments.ROLLOUT_OWNER_ANNOTATION: None}}}


def rollout(**status: Any) -> dict[str, Any]:
    return {"spec": {"replicas": 2}, "status": status}


DEADLINE = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
UNOBSERVED = "waiting for the Deployment controller to observe the change"


@pytest.mark.parametrize(
    ("deployment", "progress"),
    [
        (rollout(observedGeneration=3), (False, False, UNOBSERVED)),
        (rollout(observedGeneration=4, conditions=[{**DEADLINE, "message": "ReplicaSet z has timed out"}]),
         (False, True, "ReplicaSet z has timed out")),
        (rollout(observedGeneration=4, conditions=[DEADLINE]), (False, True, "progress deadline exceeded")),
        (rollout(observedGeneration=4, conditions=[{**DEADLINE, "reason": "NewReplicaSetAvailable"}]),
         (False, False, "0 of 2 new replicas updated")),
        (rollout(observedGeneration=4, updatedReplicas=1, replicas=2),
         (False, False, "1 of 2 new replicas updated")),
        (rollout(observedGeneration=4, updatedReplicas=2, replicas=5),
         (False, False, "3 old replicas pending termination")),
        (rollout(observedGeneration=4, updatedReplicas=2, replicas=2, availableReplicas=1),
         (False, False, "1 of 2 updated replicas available")),
        (rollout(observedGeneration=4, updatedReplicas=2, replicas=2, availableReplicas=2),
         (True, False, "2 of 2 replicas available with the new adapter")),
        # No spec.replicas: one (the API server's default); no status yet: nothing observed.
        ({"status": {"observedGeneration": 4, "updatedReplicas": 1, "replicas": 1, "availableReplicas": 1}},
         (True, False, "1 of 1 replicas available with the new adapter")),
        ({"spec": None, "status": None}, (False, False, UNOBSERVED)),
    ],
)  # fmt: skip
def test_rollout_progress_says_what_it_waits_for(deployment: dict[str, Any], progress: tuple) -> None:
    result = deployments.rollout_progress(deployment, 4)
    assert (result.done, result.failed, result.message) == progress
