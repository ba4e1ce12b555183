"""The operator's failure paths against the in-memory API: a Deployment that never appears, 409s on
the rollout lock and the revert, ProgressDeadlineExceeded, Events that cannot be posted, a failed
Job at each stage, and a crashed eval Job with a gate set."""

from __future__ import annotations

from typing import Any

import pytest
from reconcile_harness import Harness
from test_eval_gate import GATED, served_env
from zthumb_operator import deployments
from zthumb_operator.api import ConflictError

OLD, OURS = "/data/models/lora/old", "/data/models/lora/z-style"


def fail_job(h: Harness, step: str) -> None:
    job = h.api.jobs[("ml", f"z-style-{step}")]
    job["status"] = {
        "conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "backoff limit"}
        ]
    }
    h.api.bump(job)


def trained(h: Harness) -> None:
    for step in ("fetch-model", "prepare-dataset", "train"):
        h.reconcile()
        h.complete(step)


def deployed(h: Harness) -> None:
    trained(h)
    h.reconcile()  # deploy: patch
    h.rollout_done()
    h.reconcile()  # deploy done, eval Job created


def conflict_once(h: Harness, when: Any) -> list[dict[str, Any]]:
    """The next patch of the Deployment that ``when(patch)`` picks fails with a 409, as if someone
    changed the Deployment between the operator's read and its conditional patch."""
    patch_deployment = h.api.patch_deployment
    conflicts: list[dict[str, Any]] = []

    async def patch(namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if not conflicts and when(body):
            conflicts.append(body)
            h.api.bump(h.api.deployments[(namespace, name)])
            raise ConflictError("the object has been modified")
        return await patch_deployment(namespace, name, body)

    h.api.patch_deployment = patch  # type: ignore[method-assign,assignment]
    return conflicts


def takes_lock(body: dict[str, Any]) -> bool:
    return bool((body.get("metadata") or {}).get("annotations", {}).get(deployments.ROLLOUT_OWNER_ANNOTATION))


def restores_old(body: dict[str, Any]) -> bool:
    containers = body.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    return any(e.get("value") == OLD for c in containers for e in c.get("env", []))


@pytest.mark.parametrize(
    ("step", "reason"),
    [
        ("fetch-model", "FetchModelFailed"),
        ("prepare-dataset", "PrepareDatasetFailed"),
        ("train", "TrainFailed"),
    ],
)
def test_a_failed_job_at_each_stage_fails_the_run_naming_the_step(step: str, reason: str) -> None:
    h = Harness()
    for earlier in ("fetch-model", "prepare-dataset", "train"):
        h.reconcile()
        if earlier == step:
            break
        h.complete(earlier)
    fail_job(h, step)
    h.reconcile()
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Failed", reason)
    assert f"step {step}: Job z-style-{step} failed (BackoffLimitExceeded)" in st["message"]
    assert ("Warning", reason) in {(t, r) for t, r, _ in h.api.events}
    created = list(h.api.creates)
    h.reconcile()  # a failed run stays failed: no Job of a later stage, nothing deployed
    assert h.api.creates == created and h.status()["reason"] == reason
    assert served_env(h)["Z_LORA_PATH"] == OLD


def test_a_crashed_eval_without_a_gate_fails_the_run_and_keeps_the_adapter() -> None:
    h = Harness()
    deployed(h)
    fail_job(h, "eval")
    h.reconcile()
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Failed", "EvalFailed")
    assert served_env(h)["Z_LORA_PATH"] == OURS  # no gate asked for: the rollout stands


def test_a_crashed_eval_with_a_gate_restores_the_previous_adapter() -> None:
    """The gate could not judge the adapter: it fails closed, never leaving it served unevaluated."""
    h = Harness(GATED)
    deployed(h)
    assert served_env(h)["Z_LORA_PATH"] == OURS
    fail_job(h, "eval")
    h.reconcile()
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Failed", "EvalFailed")
    assert "BackoffLimitExceeded" in st["message"] and "gate" in st["message"]
    assert f"restored the previous adapter (Z_LORA_PATH={OLD})" in st["message"]
    assert served_env(h)["Z_LORA_PATH"] == OLD
    assert st["deploy"]["rolledBack"] is True
    assert ("Warning", "RolledBack") in {(t, r) for t, r, _ in h.api.events}


def test_a_missing_deployment_is_waited_for_then_fails_at_the_rollout_timeout() -> None:
    h = Harness({"deploy": {"rolloutTimeoutSeconds": 60}})
    del h.api.deployments[("ml", "zthumb")]
    trained(h)
    assert h.reconcile() is not None  # looks again
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Deploying", "DeploymentNotFound")
    h.now += 61
    h.reconcile()
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Failed", "DeploymentNotFound")
    assert "after 60" in st["message"]


def test_a_409_while_taking_the_rollout_lock_looks_again_then_takes_it() -> None:
    h = Harness()
    trained(h)
    conflicts = conflict_once(h, takes_lock)
    assert h.reconcile() is not None
    assert len(conflicts) == 1
    assert served_env(h)["Z_LORA_PATH"] == OLD  # nothing patched on a lock it did not get
    h.reconcile()
    d = h.api.deployments[("ml", "zthumb")]
    assert d["metadata"]["annotations"][deployments.ROLLOUT_OWNER_ANNOTATION] == "z-style"
    assert served_env(h)["Z_LORA_PATH"] == OURS


def test_a_409_on_the_gate_revert_looks_again_then_restores() -> None:
    h = Harness(GATED, simulated_eval_summary={"clipIGain": -0.1, "clipTDrop": 0.0})
    deployed(h)
    h.complete("eval")
    conflicts = conflict_once(h, restores_old)
    assert h.reconcile() is not None
    assert len(conflicts) == 1 and served_env(h)["Z_LORA_PATH"] == OURS
    assert h.status()["phase"] != "Failed"
    h.reconcile()
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Failed", "EvalGateFailed")
    assert served_env(h)["Z_LORA_PATH"] == OLD


def test_progress_deadline_exceeded_rolls_back_at_once_through_reconcile() -> None:
    h = Harness({"deploy": {"rolloutTimeoutSeconds": 3600}})
    trained(h)
    h.reconcile()  # patched
    d = h.api.deployments[("ml", "zthumb")]
    d["status"] = {
        "observedGeneration": d["metadata"]["generation"],
        "replicas": 1,
        "updatedReplicas": 0,
        "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": "ReplicaSet has timed out progressing."}
        ],
    }  # fmt: skip
    h.now += 5  # far from the rollout timeout
    h.reconcile()
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Failed", "RolloutFailed")
    assert "did not roll out: ReplicaSet has timed out progressing" in st["message"]
    assert served_env(h)["Z_LORA_PATH"] == OLD and st["deploy"]["rolledBack"] is True
    assert deployments.ROLLOUT_OWNER_ANNOTATION not in d["metadata"]["annotations"]


def test_an_event_that_cannot_be_posted_never_fails_the_reconcile(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()

    async def refuse(*_: Any) -> None:
        raise RuntimeError("events are forbidden")

    h.api.post_event = refuse  # type: ignore[method-assign,assignment]
    h.reconcile()
    st = h.status()
    assert st["phase"] and st["phase"] != "Failed"
    assert ("ml", "z-style-fetch-model") in h.api.jobs
    assert "could not post event Accepted" in caplog.text and "events are forbidden" in caplog.text
