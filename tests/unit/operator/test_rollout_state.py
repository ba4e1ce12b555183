"""What the deploy stage keeps in status.deploy between passes."""

from __future__ import annotations

from reconcile_harness import Harness


def test_the_first_deploy_pass_records_the_patched_generation() -> None:
    # Without it the next pass patches the Deployment again, and a change made to the Deployment
    # in between would count as this run's rollout.
    h = Harness()
    for step in ("fetch-model", "prepare-dataset", "train"):
        h.reconcile()
        h.complete(step)
    h.reconcile()  # deploy: lock, previous values, patch
    generation = h.api.deployments[("ml", "zthumb")]["metadata"]["generation"]
    deploy = h.status()["deploy"]
    assert deploy["patchedGeneration"] == generation == 2, deploy
    assert deploy["previousRecorded"] is True
