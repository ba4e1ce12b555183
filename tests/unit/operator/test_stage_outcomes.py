"""A stage's end is an outcome (``Wait``, ``Done``, ``Failed``) that only the controller writes into
the status: a stage that fails says so and leaves the run's phase alone."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from reconcile_harness import KEY, Harness
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.stages import STAGE, build_steps
from zthumb_operator import conditions
from zthumb_operator.jobstages import JobStages
from zthumb_operator.status import Done, Failed, Outcome, Pass

FAILED_JOB = {
    "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "backoff limit"}
    ]
}


def to_training(h: Harness) -> None:
    for step in ("fetch-model", "prepare-dataset"):
        h.reconcile()
        h.complete(step)
    h.reconcile()


def drive(h: Harness, stage: str) -> tuple[Outcome, Pass]:
    """Drive one stage of the harness's run once, outside the controller's loop."""
    run = copy.deepcopy(h.api.runs[KEY])
    h.controller.runs[KEY] = copy.deepcopy(run)
    for key, job in h.api.jobs.items():
        h.controller.jobs[key] = copy.deepcopy(job)
    spec = LoRAFinetuneSpec.from_manifest(run)
    steps = {s.name: s for s in build_steps("z-style", spec, "/data", "http://zthumb.ml.svc:8080")}
    p = Pass(run=run, now=h.now)

    async def go() -> Outcome:
        if stage == "deploy":
            return await h.controller.rollouts.drive(p, spec)
        return await h.controller.job_stages.drive(p, spec, STAGE[stage], steps[stage])

    return asyncio.run(go()), p


def test_a_failed_job_is_a_failed_outcome_and_the_stage_leaves_the_phase_alone() -> None:
    h = Harness()
    to_training(h)
    h.api.jobs[("ml", "z-style-train")]["status"] = FAILED_JOB
    outcome, p = drive(h, "train")
    assert isinstance(outcome, Failed), outcome
    assert outcome.reason == "TrainFailed"
    assert "Job z-style-train failed (BackoffLimitExceeded): backoff limit" in outcome.message
    assert p.status["phase"] == "Training" and "phase" not in p.patch


def test_a_deploy_that_cannot_start_is_a_failed_outcome_and_releases_the_lock() -> None:
    h = Harness()
    to_training(h)
    d = h.api.deployments[("ml", "zthumb")]
    d["spec"]["template"]["spec"]["containers"][0]["name"] = "renamed"
    outcome, p = drive(h, "deploy")
    assert outcome == Failed("ContainerNotFound", "deployment zthumb has no container 'zthumb'")
    assert p.status["phase"] == "Training" and "phase" not in p.patch
    assert not d["metadata"]["annotations"]  # the lock it took is released


def test_the_controller_writes_a_failed_outcome_in_the_passs_one_status_patch() -> None:
    h = Harness()
    to_training(h)
    h.api.jobs[("ml", "z-style-train")]["status"] = FAILED_JOB
    patches: list[dict[str, Any]] = []
    patch_run_status = h.api.patch_run_status

    async def counted(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        patches.append(copy.deepcopy(status))
        return await patch_run_status(namespace, name, status)

    h.api.patch_run_status = counted  # type: ignore[method-assign]
    assert h.reconcile() is None  # a failed run is not looked at again
    (patch,) = patches
    assert (patch["phase"], patch["reason"]) == ("Failed", "TrainFailed")
    trained = conditions.get_condition(patch["conditions"], "Trained")
    ready = conditions.get_condition(patch["conditions"], "Ready")
    assert (trained["status"], trained["reason"]) == ("False", "TrainFailed")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "TrainFailed", patch["message"])
    assert [(t, r) for t, r, _ in h.api.events][-1] == ("Warning", "TrainFailed")


@pytest.mark.parametrize(
    ("progress", "percent"),
    [
        ({"step": 0, "totalSteps": 1000}, 0),
        ({"step": 999, "totalSteps": 1000}, 99),  # rounded down: 100 only when done
        ({"step": 1000, "totalSteps": 1000}, 100),
        ({"step": 1200, "totalSteps": 1000}, 100),
        ({"step": 5, "totalSteps": 0}, None),
        ({"step": "5", "totalSteps": 10}, None),
        ({}, None),
    ],
)
def test_the_progress_percent_of_the_train_pods_report(progress: dict, percent: int | None) -> None:
    p = Pass(run={"metadata": {"name": "r"}, "status": {"progress": progress}}, now=0.0)
    JobStages.progress_percent(p)
    assert p.status.get("progress", {}).get("percent") == percent
    assert p.patch == ({"progress": {"percent": percent}} if percent is not None else {})


def test_a_finished_train_job_completes_the_progress_and_names_the_adapter() -> None:
    h = Harness()
    to_training(h)
    h.complete("train")  # 5 s from start to completion
    # The pod's last report: its loss stays, its step and estimate are the finished run's.
    h.api.runs[KEY]["status"]["progress"] = {"step": 990, "totalSteps": 1000, "loss": 0.12}
    outcome, p = drive(h, "train")
    assert outcome == Done(
        "Completed",
        "Job z-style-train completed; adapter exported to /data/models/lora/z-style",
        "TrainCompleted",
        duration_seconds=5.0,
    )
    # The pod's last report (step 0 here) is replaced: a finished run has no estimate left.
    assert p.status["progress"] == {
        "step": 1000,
        "totalSteps": 1000,
        "percent": 100,
        "estimatedRemainingSeconds": 0,
        "loss": 0.12,
    }
    assert p.status["adapterPath"] == "/data/models/lora/z-style"


def test_an_eval_pod_that_left_a_log_tail_gets_no_simulated_summary() -> None:
    h = Harness()  # the harness simulates a summary for eval pods that left no message at all
    to_training(h)
    h.complete("train")
    h.reconcile()
    h.rollout_done()
    h.reconcile()
    h.complete("eval")
    h.api.pods["z-style-eval"] = [
        {
            "metadata": {"name": "z-style-eval-x", "creationTimestamp": "2026-01-01T00:00:04Z"},
            "status": {
                "containerStatuses": [{"state": {"terminated": {"exitCode": 0, "message": "a log line"}}}]
            },
        }
    ]
    outcome, p = drive(h, "eval")
    assert isinstance(outcome, Done) and outcome.message.endswith(
        "; report /data/outputs/lora_eval/z-style/report.md"
    )
    assert "evalSummary" not in p.status


def test_the_operators_job_deadline_reaches_every_job() -> None:
    h = Harness(active_deadline_seconds=1234)
    to_training(h)
    assert {job["spec"]["activeDeadlineSeconds"] for job in h.api.jobs.values()} == {1234}


def test_a_condition_carries_the_runs_generation_and_an_unchanged_one_is_not_written_again() -> None:
    run = {"metadata": {"name": "r", "generation": 3}, "status": {}}
    p = Pass(run=run, now=0.0)
    p.condition("Trained", "False", "Running", "Job r-train is running")
    (written,) = p.patch["conditions"]
    assert (written["type"], written["status"], written["observedGeneration"]) == ("Trained", "False", 3)
    again = Pass(run={**run, "status": {"conditions": p.status["conditions"]}}, now=60.0)
    again.condition("Trained", "False", "Running", "Job r-train is running")
    assert again.patch == {}
    again.condition("Trained", "True", "Completed", "done")
    assert conditions.get_condition(again.patch["conditions"], "Trained")["status"] == "True"
