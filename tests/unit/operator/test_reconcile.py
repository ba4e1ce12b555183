"""The state machine against an in-memory fake of the API (no cluster)."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest
from lft_helpers import make_run
from prometheus_client import REGISTRY
from reconcile_harness import KEY, Harness
from zthumb_contract.crd import format_time
from zthumb_operator import builders as b
from zthumb_operator import conditions, deployments


def train_seconds() -> float:
    """The train step's observed seconds so far (the step-duration histogram's sum)."""
    return REGISTRY.get_sample_value("zthumb_operator_step_duration_seconds_sum", {"step": "train"}) or 0.0


def test_happy_path_through_every_phase() -> None:
    train_seconds_before = train_seconds()
    h = Harness()
    h.reconcile()
    assert h.api.creates == ["z-style-fetch-model"]
    assert h.status()["phase"] == "Downloading"
    assert h.status()["jobs"] == {"fetch-model": "z-style-fetch-model"}
    h.complete("fetch-model")
    h.reconcile()
    assert h.status()["phase"] == "PreparingDataset"
    h.complete("prepare-dataset")
    h.reconcile()
    assert h.status()["phase"] == "Training"
    assert h.status()["progress"] == {"step": 0, "totalSteps": 1000, "percent": 0}
    h.complete("train")
    h.reconcile()  # deploy: lock, previous values, patch
    st = h.status()
    assert st["phase"] == "Deploying"
    assert st["deploy"]["previousEnv"] == {"Z_LORA_PATH": "/data/models/lora/old"}
    assert st["progress"]["percent"] == 100 and st["progress"]["estimatedRemainingSeconds"] == 0
    d = h.api.deployments[("ml", "zthumb")]
    assert d["metadata"]["annotations"][deployments.ROLLOUT_OWNER_ANNOTATION] == "z-style"
    env = {e["name"]: e["value"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["Z_LORA_PATH"] == "/data/models/lora/z-style"
    assert env["Z_LORA_SCALE"] == "0.8"
    assert st["adapterPath"] == "/data/models/lora/z-style"
    h.rollout_done()
    h.reconcile()
    assert deployments.ROLLOUT_OWNER_ANNOTATION not in d["metadata"]["annotations"]  # lock released
    assert h.status()["phase"] == "Evaluating"
    assert (
        "http://zthumb.ml.svc:8080"
        in h.api.jobs[("ml", "z-style-eval")]["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    h.complete("eval")
    h.reconcile()
    st = h.status()
    assert st["phase"] == "Succeeded"
    assert st["evalSummary"] == {"requests": 8}
    assert st["reportPath"] == "/data/outputs/lora_eval/z-style/report.md"
    assert st["reportUrl"] == "/reports/z-style/"
    assert st["message"] == (
        "adapter /data/models/lora/z-style is served by deployment zthumb; "
        "report /data/outputs/lora_eval/z-style/report.md"
    )
    trained = conditions.get_condition(st["conditions"], "Trained")
    assert (trained["status"], trained["reason"]) == ("True", "Completed")
    completed = "Job z-style-train completed; adapter exported to /data/models/lora/z-style"
    assert trained["message"] == completed and ("Normal", "TrainCompleted", completed) in h.api.events
    assert train_seconds() - train_seconds_before == 5.0  # the harness's Job took 5 s
    assert st["completionTime"]
    for ctype in ("Ready", "ModelFetched", "DatasetPrepared", "Trained", "Deployed", "Evaluated"):
        assert conditions.condition_true(st["conditions"], ctype), ctype
    assert h.api.creates == [
        "z-style-fetch-model",
        "z-style-prepare-dataset",
        "serviceaccount/z-style-trainer",  # the train pod's own identity, just before its Job
        "role/z-style-trainer",
        "rolebinding/z-style-trainer",
        "z-style-train",
        "z-style-eval",
    ]
    reasons = [r for _, r, _ in h.api.events]
    for reason in (
        "Accepted",
        "JobCreated",
        "TrainCompleted",
        "RolloutStarted",
        "DeployCompleted",
        "Succeeded",
    ):
        assert reason in reasons
    # terminal: nothing more happens
    assert h.reconcile() is None


def test_completed_steps_are_never_rerun_even_when_their_job_is_gone() -> None:
    h = Harness()
    h.reconcile()
    h.complete("fetch-model")
    h.reconcile()
    del h.api.jobs[("ml", "z-style-fetch-model")]  # TTL after finished
    h.reconcile()
    assert h.api.creates.count("z-style-fetch-model") == 1


def test_existing_job_is_adopted_never_duplicated() -> None:
    h = Harness()
    # A Job from before a restart that the (cold) cache does not know about yet.
    asyncio.run(
        h.api.create_job(
            "ml", {"metadata": {"name": "z-style-fetch-model", "ownerReferences": [{"uid": "uid-1"}]}}
        )
    )
    h.api.creates.clear()

    async def cold() -> None:
        await h.controller.reconcile(KEY)

    asyncio.run(cold())
    assert h.api.creates == []
    assert h.status()["jobs"] == {"fetch-model": "z-style-fetch-model"}
    assert h.status()["phase"] == "Downloading"


def test_job_of_an_earlier_run_with_the_same_name_is_waited_for() -> None:
    import kopf

    h = Harness()
    asyncio.run(
        h.api.create_job(
            "ml", {"metadata": {"name": "z-style-fetch-model", "ownerReferences": [{"uid": "old"}]}}
        )
    )
    with pytest.raises(kopf.TemporaryError):
        h.reconcile()


def unschedulable(h: Harness, step: str, since: str) -> None:
    h.controller.pods[("ml", b.single_node_job_name("z-style", step))] = {
        "p": {
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 2 Insufficient nvidia.com/gpu.",
                        "lastTransitionTime": since,
                    }
                ],
            }
        }
    }


def to_training(h: Harness) -> None:
    h.reconcile()
    h.complete("fetch-model")
    h.reconcile()
    h.complete("prepare-dataset")
    h.reconcile()


def test_unschedulable_stays_pending_with_the_scheduler_message_then_fails_at_the_deadline() -> None:
    h = Harness({"resources": {"gpus": 16}}, unschedulable_deadline_seconds=600)
    to_training(h)
    unschedulable(h, "train", format_time(h.now))
    delay = h.reconcile()
    st = h.status()
    assert st["phase"] == "Pending"
    assert st["reason"] == "Unschedulable"
    scheduler = "Unschedulable: 0/3 nodes are available: 2 Insufficient nvidia.com/gpu."
    assert st["message"] == (
        f"step train: Job z-style-train cannot be scheduled yet ({scheduler}); failing after 600s"
    )
    cond = conditions.get_condition(st["conditions"], "Scheduled")
    assert (cond["status"], cond["reason"], cond["message"]) == ("False", "Unschedulable", scheduler)
    trained = conditions.get_condition(st["conditions"], "Trained")
    assert (trained["status"], trained["reason"], trained["message"]) == (
        "False", "Unschedulable", "Job z-style-train cannot be scheduled",
    )  # fmt: skip
    assert delay == pytest.approx(600)
    # Scheduled after all: the condition says so, and the stage runs.
    h.controller.pods.clear()
    h.reconcile()
    st = h.status()
    cond = conditions.get_condition(st["conditions"], "Scheduled")
    assert (cond["status"], cond["reason"], cond["message"]) == (
        "True", "Scheduled", "Job z-style-train has been scheduled",
    )  # fmt: skip
    trained = conditions.get_condition(st["conditions"], "Trained")
    assert (trained["status"], trained["reason"], trained["message"]) == (
        "False", "Running", "Job z-style-train is running",
    )  # fmt: skip
    assert (st["phase"], st["reason"], st["message"]) == (
        "Training", "Running", "step train: Job z-style-train is running",
    )  # fmt: skip
    unschedulable(h, "train", format_time(h.now))
    h.now += 601
    h.reconcile()
    st = h.status()
    assert st["phase"] == "Failed"
    assert st["reason"] == "Unschedulable"
    assert "z-style-train" in h.api.deleted


def test_failed_train_job_fails_the_run_with_a_reason() -> None:
    h = Harness()
    to_training(h)
    job = h.api.jobs[("ml", "z-style-train")]
    job["status"] = {
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
            }
        ]
    }
    h.reconcile()
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Failed", "TrainFailed")
    assert "BackoffLimitExceeded" in st["message"]
    assert conditions.get_condition(st["conditions"], "Trained")["status"] == "False"
    assert conditions.get_condition(st["conditions"], "Ready")["reason"] == "TrainFailed"
    assert ("Warning", "TrainFailed") in [(t, r) for t, r, _ in h.api.events]


def test_kueue_suspended_job_is_pending_queued() -> None:
    h = Harness({"queueName": "team-a"})
    h.reconcile()
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Pending", "Queued")
    assert (
        st["message"] == "step fetch-model: Job z-style-fetch-model waits for Kueue queue team-a to admit it"
    )
    fetched = conditions.get_condition(st["conditions"], "ModelFetched")
    assert (fetched["status"], fetched["reason"], fetched["message"]) == (
        "False", "Queued", "Job z-style-fetch-model is suspended",
    )  # fmt: skip
    assert h.api.jobs[("ml", "z-style-fetch-model")]["spec"]["suspend"] is True
    created = "created Job z-style-fetch-model for step fetch-model (suspended for Kueue queue team-a)"
    assert ("Normal", "JobCreated", created) in h.api.events


def test_rollout_timeout_restores_the_previous_adapter() -> None:
    h = Harness({"deploy": {"rolloutTimeoutSeconds": 30}})
    to_training(h)
    h.complete("train")
    h.reconcile()
    d = h.api.deployments[("ml", "zthumb")]
    d["status"] = {
        "observedGeneration": d["metadata"]["generation"],
        "replicas": 2,
        "updatedReplicas": 1,
        "availableReplicas": 1,
    }
    h.now += 10
    h.reconcile()
    assert h.status()["phase"] == "Deploying"
    h.now += 31
    h.reconcile()
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Failed", "RolloutFailed")
    assert st["deploy"]["rolledBack"] is True
    env = {e["name"]: e["value"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["Z_LORA_PATH"] == "/data/models/lora/old"
    assert "Z_LORA_SCALE" not in env  # was not set before: removed again
    assert deployments.ROLLOUT_OWNER_ANNOTATION not in d["metadata"]["annotations"]


def test_rollouts_of_one_deployment_are_serialized() -> None:
    h = Harness()
    other = make_run({"dataset": {"triggerWord": "q"}}, name="other")
    other["metadata"]["uid"] = "uid-2"
    other["status"] = {"phase": "Deploying"}
    h.add_run(other)
    h.api.deployments[("ml", "zthumb")]["metadata"]["annotations"][deployments.ROLLOUT_OWNER_ANNOTATION] = (
        "other"
    )
    to_training(h)
    h.complete("train")
    h.reconcile()
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Deploying", "WaitingForRollout")
    assert st["message"] == (
        "waiting for run other to finish its rollout of deployment zthumb "
        "(one rollout per Deployment at a time)"
    )
    deployed = conditions.get_condition(st["conditions"], "Deployed")
    assert (deployed["status"], deployed["reason"], deployed["message"]) == (
        "False", "WaitingForRollout", "run other is rolling out zthumb",
    )  # fmt: skip
    # the owner finishes: its lock is stale and is taken over
    h.controller.runs[("ml", "other")]["status"] = {"phase": "Succeeded"}
    h.reconcile()
    d = h.api.deployments[("ml", "zthumb")]
    assert d["metadata"]["annotations"][deployments.ROLLOUT_OWNER_ANNOTATION] == "z-style"
    assert h.status()["deploy"]["patchedGeneration"] == 2


def test_invalid_spec_fails_without_crash_looping() -> None:
    h = Harness()
    h.controller.runs[KEY]["spec"]["training"]["rank"] = 0  # bypassing the API server's validation
    assert h.reconcile() is None
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.training.rank" in st["message"]


def test_deploy_disabled_ends_after_training() -> None:
    h = Harness({"deploy": {"enabled": False}, "eval": {"enabled": False}})
    to_training(h)
    h.complete("train")
    h.reconcile()
    assert (h.status()["phase"], h.status()["message"]) == ("Succeeded", "adapter exported (deploy disabled)")
    assert "z-style-eval" not in h.api.creates


def test_events_coalesce_into_one_reconcile_per_run() -> None:
    h = Harness()
    calls: list[tuple[str, str]] = []

    async def go() -> None:
        async def fake(key: tuple[str, str]) -> None:
            calls.append(key)
            await asyncio.sleep(0)

        h.controller.reconcile = fake  # type: ignore[assignment,method-assign]
        run = copy.deepcopy(h.api.runs[KEY])
        for _ in range(5):
            h.controller.on_run_event("MODIFIED", run)
        await h.controller.idle()

    asyncio.run(go())
    assert calls == [KEY]


def test_progress_percent_is_derived_from_the_train_pods_reports() -> None:
    h = Harness()
    to_training(h)
    # the train pod merge-patches step/totalSteps/loss/estimatedRemainingSeconds/lastUpdateTime
    h.api.runs[KEY]["status"]["progress"] = {
        "step": 250,
        "totalSteps": 1000,
        "loss": 0.1,
        "estimatedRemainingSeconds": 60,
        "lastUpdateTime": "2026-01-01T00:00:00Z",
    }
    h.controller.runs[KEY] = copy.deepcopy(h.api.runs[KEY])
    h.reconcile()
    assert h.status()["progress"] == {
        "step": 250,
        "totalSteps": 1000,
        "loss": 0.1,
        "estimatedRemainingSeconds": 60,
        "lastUpdateTime": "2026-01-01T00:00:00Z",
        "percent": 25,
    }


def test_train_results_reach_the_status_from_the_train_pods_termination_message() -> None:
    h = Harness()
    to_training(h)
    training = {"stepsPerSecond": 3.2, "peakMemoryBytes": 12884901888, "memoryKind": "CUDAMaxAllocated"}
    message = json.dumps({"run_name": "z-style", "final_loss": 0.1, "training": training})
    h.api.pods["z-style-train"] = [
        {"status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 0, "message": message}}}]}}
    ]
    h.complete("train")
    h.reconcile()
    st = h.status()
    assert st["training"] == training
    assert conditions.condition_true(st["conditions"], "Trained")


def test_a_train_pod_without_results_leaves_the_status_without_them() -> None:
    h = Harness()
    to_training(h)
    h.complete("train")
    h.reconcile()
    assert conditions.condition_true(h.status()["conditions"], "Trained") and "training" not in h.status()


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        ({}, "ghcr.io/zthumb/trainer:0.1.0"),
        ({"trainer": "registry.example/trainer:2"}, "registry.example/trainer:2"),
    ],
)
def test_job_image_is_the_specs_or_else_the_operators(images: dict[str, str], expected: str) -> None:
    h = Harness({"images": images} if images else None, allowed_trainer_images=("registry.example/",))
    h.reconcile()
    job = h.api.jobs[("ml", "z-style-fetch-model")]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == expected


def test_rollout_lock_of_a_deleted_run_is_taken_over() -> None:
    h = Harness()
    h.api.deployments[("ml", "zthumb")]["metadata"]["annotations"][deployments.ROLLOUT_OWNER_ANNOTATION] = (
        "gone"
    )
    to_training(h)
    h.complete("train")
    h.reconcile()
    d = h.api.deployments[("ml", "zthumb")]
    assert d["metadata"]["annotations"][deployments.ROLLOUT_OWNER_ANNOTATION] == "z-style"
    assert ("Normal", "RolloutLockTakenOver", "took over the stale rollout lock of run gone") in h.api.events


# --------------------------------------------------------------------------- multi-node train


MULTI = {"dataset": {"triggerWord": "z"}, "resources": {"nodes": 3, "gpus": 2}}


def test_multi_node_train_is_a_headless_service_then_an_indexed_job() -> None:
    h = Harness(MULTI)
    to_training(h)
    assert h.api.creates[-2:] == ["service/z-style-train", "z-style-train"]
    job = h.api.jobs[("ml", "z-style-train")]
    assert (job["spec"]["completionMode"], job["spec"]["completions"]) == ("Indexed", 3)
    assert job["spec"]["template"]["spec"]["subdomain"] == "z-style-train"
    service = h.api.services[("ml", "z-style-train")]
    assert service["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert h.status()["jobs"]["train"] == "z-style-train"
    assert h.status()["phase"] == "Training"
    # Reconciling again creates nothing new; a cold cache (operator restart) adopts both.
    h.reconcile()
    h.controller.jobs.clear()
    asyncio.run(h.controller.reconcile(KEY))
    assert h.api.creates.count("z-style-train") == 1
    assert h.api.creates.count("service/z-style-train") == 1
    h.complete("train")
    h.reconcile()
    assert conditions.condition_true(h.status()["conditions"], "Trained")


def test_service_of_an_earlier_run_with_the_same_name_is_waited_for() -> None:
    import kopf

    h = Harness(MULTI)
    h.api.services[("ml", "z-style-train")] = {
        "metadata": {"name": "z-style-train", "ownerReferences": [{"uid": "old"}]}
    }
    h.reconcile()
    h.complete("fetch-model")
    h.reconcile()
    h.complete("prepare-dataset")
    with pytest.raises(kopf.TemporaryError) as waiting:
        h.reconcile()
    assert str(waiting.value) == (
        "Service z-style-train belongs to an earlier LoRAFinetune of the same name and is still being "
        "deleted; waiting for the garbage collector"
    )
    assert waiting.value.delay == 5
    assert ("ml", "z-style-train") not in h.api.jobs


def test_failed_node_of_a_multi_node_job_is_named_in_the_status() -> None:
    h = Harness(MULTI)
    to_training(h)
    job = h.api.jobs[("ml", "z-style-train")]
    job["status"] = {
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "PodFailurePolicy",
                "message": "Container train for pod ml/z-style-train-2-x failed with exit code 3 "
                "matching FailJob rule at index 0",
            }
        ]
    }
    failed = {
        "metadata": {
            "name": "z-style-train-2-x",
            "annotations": {"batch.kubernetes.io/job-completion-index": "2"},
        },
        "status": {
            "containerStatuses": [
                {
                    "name": "train",
                    "state": {
                        "terminated": {
                            "exitCode": 3,
                            "reason": "Error",
                            "message": "training interrupted: no rendezvous with node 0 within 600s",
                            "finishedAt": "2026-01-01T00:00:05Z",
                        }
                    },
                }
            ]
        },
    }
    # Not in the cache yet (its last pod event still on the way): the operator lists the pods.
    h.api.pods["z-style-train"] = [failed]
    h.reconcile()
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Failed", "TrainFailed")
    assert "PodFailurePolicy" in st["message"]
    assert "node 2 (pod z-style-train-2-x) failed first: exit code 3 (Error)" in st["message"]
    assert "no rendezvous with node 0" in st["message"]
    assert "node 2" in conditions.get_condition(st["conditions"], "Trained")["message"]


def test_several_nodes_without_gpus_fail_as_an_invalid_spec_naming_nodes() -> None:
    h = Harness()
    h.controller.runs[KEY]["spec"]["resources"].update({"nodes": 2, "gpus": 0})  # past the API server
    assert h.reconcile() is None
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.resources.nodes" in st["message"] and "gpus >= 1" in st["message"]
    assert h.api.jobs == {}
