"""The deploy stage's rollout states (``rollout_states``): which state a status is in, and what
each state comes to given a Deployment; and what the deploy stage keeps in status.deploy."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from lft_helpers import make_run
from reconcile_harness import KEY, Harness, deployment
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_operator import conditions, deployments
from zthumb_operator.rollout_states import (
    Lock,
    RollBack,
    RollingOut,
    RolloutState,
    lock,
    record_previous,
    rollout_state,
    watch_rollout,
)
from zthumb_operator.status import Done, Failed

# status.deploy as every operator so far has written it, state by state (no field of its own).
WAITING = {"waitingSince": "2026-01-01T00:00:00Z"}
RECORDED = {
    **WAITING,
    "deployment": "zthumb",
    "container": "zthumb",
    "previousEnv": {"Z_LORA_PATH": "/data/models/lora/old"},
    "previousRecorded": True,
    "startedAt": "2026-01-01T00:00:01Z",
}
PATCHED = {**RECORDED, "patchedGeneration": 2}
DEPLOYED = [{"type": "Deployed", "status": "True", "reason": "RolloutComplete", "message": "m"}]


def spec_of(spec: dict[str, Any] | None = None) -> LoRAFinetuneSpec:
    return LoRAFinetuneSpec.from_manifest(make_run(spec or {"dataset": {"triggerWord": "z"}}))


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, RolloutState.WAITING),
        ({"deploy": WAITING}, RolloutState.WAITING),
        ({"deploy": RECORDED}, RolloutState.RECORDED),
        ({"deploy": PATCHED}, RolloutState.PATCHED),
        ({"deploy": PATCHED, "conditions": DEPLOYED}, RolloutState.RELEASED),
        ({"deploy": {**PATCHED, "rolledBack": True}}, RolloutState.ROLLED_BACK),
        # the eval gate rolls back after the rollout was complete
        ({"deploy": {**PATCHED, "rolledBack": True}, "conditions": DEPLOYED}, RolloutState.ROLLED_BACK),
    ],
)
def test_the_state_is_derived_from_the_flags_status_deploy_has_always_kept(
    status: dict[str, Any], expected: RolloutState
) -> None:
    assert rollout_state(status) is expected


def locked(owner: str | None) -> dict[str, Any]:
    d = deployment()
    if owner:
        d["metadata"]["annotations"][deployments.ROLLOUT_OWNER_ANNOTATION] = owner
    return d


def test_the_lock_is_ours_busy_or_taken() -> None:
    def live(run: str) -> bool:
        return run == "other"

    assert lock(locked("z-style"), "z-style", live) is Lock.OURS
    assert lock(locked("other"), "z-style", live) is Lock.BUSY
    assert lock(locked("gone"), "z-style", live) is Lock.TAKE  # stale: its owner is gone or finished
    assert lock(locked(None), "z-style", live) is Lock.TAKE


def test_waiting_records_the_env_the_deployment_serves_now() -> None:
    d = deployment([{"name": "Z_LORA_PATH", "value": "/data/models/lora/old"}, {"name": "X", "value": "1"}])
    recorded = record_previous(d, spec_of(), WAITING, "2026-01-01T00:00:01Z")
    assert recorded == RECORDED
    assert rollout_state({"deploy": recorded}) is RolloutState.RECORDED


def test_waiting_fails_on_a_missing_container_or_a_key_eval_could_not_use() -> None:
    d = deployment()
    d["spec"]["template"]["spec"]["containers"][0]["name"] = "other"
    assert record_previous(d, spec_of(), WAITING, "T") == Failed(
        "ContainerNotFound", "deployment zthumb has no container 'zthumb'"
    )
    literal = deployment([{"name": "ZTHUMB_API_KEY", "value": "s3cret"}])
    refused = record_previous(literal, spec_of(), WAITING, "T")
    assert isinstance(refused, Failed) and refused.reason == "ApiKeyNotInSecret"
    assert "The adapter was not rolled out" in refused.message and "s3cret" not in refused.message
    no_eval = spec_of({"dataset": {"triggerWord": "z"}, "eval": {"enabled": False}})
    assert isinstance(record_previous(literal, no_eval, WAITING, "T"), dict)


def rolled(observed: int, *, updated: int = 1, available: int = 1, **extra: Any) -> dict[str, Any]:
    d = deployment()
    d["metadata"]["generation"] = 2
    d["status"] = {
        "observedGeneration": observed,
        "replicas": 1,
        "updatedReplicas": updated,
        "availableReplicas": available,
        **extra,
    }
    return d


def test_patched_is_done_once_the_patched_generation_is_available() -> None:
    done = watch_rollout(rolled(2), PATCHED, waited=12.5, timeout=600)
    assert done == Done(
        "RolloutComplete",
        "deployment zthumb rolled out: 1 of 1 replicas available with the new adapter",
        "DeployCompleted",
        duration_seconds=12.5,
    )


def test_patched_keeps_rolling_out_until_the_timeout_then_rolls_back() -> None:
    waiting = watch_rollout(rolled(1), PATCHED, waited=10, timeout=600)  # generation 2 not observed
    assert waiting == RollingOut("waiting for the Deployment controller to observe the change")
    assert watch_rollout(rolled(2, available=0), PATCHED, waited=10, timeout=600) == RollingOut(
        "0 of 1 updated replicas available"
    )
    late = watch_rollout(rolled(2, available=0), PATCHED, waited=600, timeout=600)
    assert late == RollBack("not available within 600s (0 of 1 updated replicas available)")


def test_patched_rolls_back_at_once_on_progress_deadline_exceeded() -> None:
    stuck = rolled(
        2,
        available=0,
        conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "too slow"}],
    )
    assert watch_rollout(stuck, PATCHED, waited=1, timeout=600) == RollBack("too slow")


# --------------------------------------------------------------------------- through the controller


def to_deploy(h: Harness) -> None:
    for step in ("fetch-model", "prepare-dataset", "train"):
        h.reconcile()
        h.complete(step)


def test_the_first_deploy_pass_records_the_patched_generation() -> None:
    # Without it the next pass patches the Deployment again, and a change made to the Deployment
    # in between would count as this run's rollout.
    h = Harness()
    to_deploy(h)
    h.reconcile()  # deploy: lock, previous values, patch
    generation = h.api.deployments[("ml", "zthumb")]["metadata"]["generation"]
    deploy = h.status()["deploy"]
    assert deploy["patchedGeneration"] == generation == 2, deploy
    assert deploy["previousRecorded"] is True
    assert rollout_state(h.status()) is RolloutState.PATCHED


def test_a_rollout_an_earlier_operator_patched_is_watched_not_patched_again() -> None:
    """An operator restart mid-rollout: the flags alone put the run in PATCHED."""
    h = Harness()
    to_deploy(h)
    h.reconcile()
    d = h.api.deployments[("ml", "zthumb")]
    before = copy.deepcopy(d["spec"])
    h.controller.rollouts.steps.pop(RolloutState.RECORDED)  # patching again would fail the test
    h.rollout_done()
    h.reconcile()
    assert d["spec"] == before and d["metadata"]["generation"] == 2
    assert conditions.condition_true(h.status()["conditions"], "Deployed")
    assert rollout_state(h.status()) is RolloutState.RELEASED


def test_a_run_holds_the_rollout_lock_until_it_is_deployed_or_finished() -> None:
    h = Harness()
    rollouts = h.controller.rollouts
    run = h.controller.runs[KEY]
    assert rollouts.holds_lock(KEY)  # not deployed yet
    assert not rollouts.holds_lock(("ml", "gone"))
    run["status"] = {"phase": "Deploying", "conditions": [{"type": "Deployed", "status": "False"}]}
    assert rollouts.holds_lock(KEY)
    run["status"] = {"phase": "Evaluating", "conditions": [{"type": "Deployed", "status": "True"}]}
    assert not rollouts.holds_lock(KEY)  # deployed: the next run may roll out
    # Another condition that is True is not the deploy stage's.
    run["status"] = {"phase": "Deploying", "conditions": [{"type": "Trained", "status": "True"}]}
    assert rollouts.holds_lock(KEY)
    for phase in ("Succeeded", "Failed"):
        run["status"] = {"phase": phase}
        assert not rollouts.holds_lock(KEY)
