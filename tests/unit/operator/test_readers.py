"""Readers: what a step's Job and its pods amount to for the run (its state, the eval summary,
the train results, the node of a multi-node Job that failed first)."""

from __future__ import annotations

import json
from typing import Any

from zthumb_operator import readers


def test_job_state_reads_conditions_suspension_and_scheduling() -> None:
    complete = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert readers.job_state(complete).state == "succeeded"
    failed = readers.job_state(
        {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}},
        [{"status": {"containerStatuses": [{"state": {"terminated": {"message": "CUDA out of memory"}}}]}}],
    )
    assert (failed.state, failed.reason) == ("failed", "BackoffLimitExceeded")
    assert "CUDA out of memory" in failed.message
    assert readers.job_state({"spec": {"suspend": True}}).state == "suspended"
    pod = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        }
    }
    unsched = readers.job_state({"spec": {}}, [pod])
    assert unsched.state == "unschedulable"
    assert "Insufficient nvidia.com/gpu" in unsched.message
    assert unsched.since == "2026-01-01T00:00:00Z"
    assert readers.job_state({"spec": {}}, []).state == "running"


def test_eval_summary_is_read_through_the_results_model() -> None:
    """Known numbers kept (the adapter's sha256 too), unknown keys ignored, a NaN or out-of-range
    value dropped on its own without losing the others."""
    message = (
        '{"requests": 8, "meanPixelDifference": 12.5, "clipIGain": NaN, "leakage": 3.5, '
        '"report": "report.md", "newerMetric": 1, "adapterSha256": "' + "ab" * 32 + '"}'
    )
    pods = [{"status": {"containerStatuses": [{"state": {"terminated": {"message": message}}}]}}]
    assert readers.eval_summary(pods) == {
        "requests": 8,
        "meanPixelDifference": 12.5,
        "adapterSha256": "ab" * 32,
    }
    assert readers.eval_summary([{"status": {}}]) is None


def _terminated(message: str, created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {
        "metadata": {"creationTimestamp": created},
        "status": {"containerStatuses": [{"state": {"terminated": {"message": message}}}]},
    }


def test_train_results_from_the_termination_message() -> None:
    block = {"stepsPerSecond": 2.5, "peakMemoryBytes": 21474836480, "memoryKind": "CUDAMaxAllocated",
             "device": "cuda:0", "finalLoss": 0.12, "futureNumber": 3}  # fmt: skip
    summary = {"run_name": "z", "steps_per_second": 2.0, "training": block}
    earlier = _terminated("Traceback ...\nSIGTERM", "2026-01-01T00:00:00Z")  # a failed try: its log
    pods = [earlier, _terminated(json.dumps(summary), "2026-01-01T00:01:00Z")]
    assert readers.train_results(pods) == {
        "stepsPerSecond": 2.5,
        "peakMemoryBytes": 21474836480,
        "memoryKind": "CUDAMaxAllocated",
        "device": "cuda:0",
        "finalLoss": 0.12,
    }  # an unknown key is left out (the API server would prune it anyway)
    assert readers.train_results([earlier]) is None
    assert readers.train_results([_terminated('{"run_name": "z"}')]) is None  # an older trainer: no block


def test_train_results_drop_each_value_the_api_server_would_refuse() -> None:
    """A NaN loss or an unknown memory kind must not lose the rest, nor fail the status patch."""
    block = {"stepsPerSecond": 1.5, "peakMemoryBytes": -1, "memoryKind": "HBM", "finalLoss": float("nan")}
    message = json.dumps({"training": block})  # json writes NaN, and reads it back
    assert readers.train_results([_terminated(message)]) == {"stepsPerSecond": 1.5}
    assert readers.train_results([_terminated('{"training": [1, 2]}')]) is None


# --------------------------------------------------------------------------- a multi-node Job


def _pod(
    name: str, index: str, code: int, finished: str, *, message: str = "", reason: str = "Error"
) -> dict:
    return {
        "metadata": {"name": name, "annotations": {readers.COMPLETION_INDEX_ANNOTATION: index}},
        "status": {
            "phase": "Failed" if code else "Succeeded",
            "containerStatuses": [
                {
                    "name": "train",
                    "state": {
                        "terminated": {
                            "exitCode": code,
                            "reason": reason,
                            "message": message,
                            "finishedAt": finished,
                        }
                    },
                }
            ],
        },
    }


def test_the_status_names_the_node_that_failed_first_and_why() -> None:
    pods = [
        _pod("z-style-train-0-aaaaa", "0", 137, "2026-01-01T00:00:09Z", reason="Error"),
        _pod(
            "z-style-train-1-bbbbb",
            "1",
            1,
            "2026-01-01T00:00:05Z",
            message="RuntimeError: CUDA error: out of memory",
        ),
        _pod("z-style-train-2-ccccc", "2", 0, "2026-01-01T00:00:04Z"),
    ]
    text = readers.failed_node(pods)
    assert text is not None
    assert text.startswith("node 1 (pod z-style-train-1-bbbbb) failed first: exit code 1 (Error)")
    assert "CUDA error: out of memory" in text
    assert text.endswith("also failed: node 0")
    job = {
        "status": {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "PodFailurePolicy",
                    "message": "Container train for pod ml/z-style-train-1-bbbbb failed with exit code 1 "
                    "matching FailJob rule at index 0",
                }
            ]
        }
    }
    message = readers.failure_message(job, pods)
    assert message.startswith("Container train for pod ml/z-style-train-1-bbbbb failed with exit code 1")
    assert "node 1 (pod z-style-train-1-bbbbb) failed first" in message
    assert "last container message" not in message  # not the newest (killed) pod's
    assert readers.failed_node([pods[2]]) is None
    assert readers.failure_message(job, []) == job["status"]["conditions"][0]["message"]


def test_the_pod_the_job_controller_blamed_comes_first_on_a_tie() -> None:
    """Peers of a dead process exit within the same second: finishedAt cannot tell who was first,
    the Job's FailJob message can."""
    same = "2026-01-01T00:00:05Z"
    pods = [
        _pod("z-style-train-0-aaaaa", "0", 1, same, message="gloo: connection reset by peer"),
        _pod("z-style-train-1-bbbbb", "1", 1, same, message="worker killed (SIGKILL)"),
    ]
    assert (readers.failed_node(pods) or "").startswith("node 0 ")  # no verdict: list order on a tie
    verdict = "Container train for pod ml/z-style-train-1-bbbbb failed with exit code 1 matching FailJob rule"
    text = readers.failed_node(pods, verdict) or ""
    assert text.startswith("node 1 (pod z-style-train-1-bbbbb) failed first: exit code 1")
    assert text.endswith("also failed: node 0")


def test_a_long_termination_message_keeps_its_last_lines_whole() -> None:
    log = "\n".join(f"line {i:04d} of a long torchrun traceback" for i in range(100))
    text = readers.failed_node([_pod("j-1-x", "1", 1, "2026-01-01T00:00:05Z", message=log)]) or ""
    tail = text.split(": ", 2)[-1]
    assert tail.startswith("line ") and tail.endswith("line 0099 of a long torchrun traceback")
    assert len(tail) <= 1000


def test_termination_messages_come_oldest_pod_first_and_a_pod_without_a_time_first() -> None:
    def pod(created: str | None, message: str) -> dict[str, Any]:
        meta = {"creationTimestamp": created} if created else {}
        term = {"state": {"terminated": {"exitCode": 1, "message": f" {message} \n"}}}
        return {"metadata": meta, "status": {"containerStatuses": [term]}}

    pods = [
        pod("2026-01-01T00:00:09Z", "newest"),
        pod(None, "unknown"),
        pod("2026-01-01T00:00:01Z", "oldest"),
    ]
    assert readers.terminated_messages(pods) == ["unknown", "oldest", "newest"]
    assert readers.terminated_messages([{"metadata": None, "status": None}]) == []


def test_a_steps_duration_needs_its_start_and_completion() -> None:
    done = {"status": {"startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:30Z"}}
    assert readers.step_duration_seconds(done) == 90.0
    assert readers.step_duration_seconds({"status": {"startTime": "2026-01-01T00:00:00Z"}}) is None
    assert readers.step_duration_seconds({"status": None}) is None


def test_an_unschedulable_pod_without_reason_or_message_gets_the_defaults() -> None:
    bare = {"status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]}}
    state = readers.job_state({"spec": {}}, [bare])
    assert (state.state, state.reason, state.message, state.since) == (
        "unschedulable", "Unschedulable", "the pod cannot be scheduled", None,
    )  # fmt: skip
    running = {"status": {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "False"}]}}
    assert readers.job_state({"spec": {}}, [running]).state == "running"


def test_the_newer_job_conditions_count_as_success_and_failure() -> None:
    """Kubernetes 1.31+ marks a Job SuccessCriteriaMet / FailureTarget before Complete / Failed."""

    def job(kind: str) -> dict[str, Any]:
        return {"status": {"conditions": [{"type": kind, "status": "True", "reason": kind}]}}

    assert readers.job_state(job("SuccessCriteriaMet")).state == "succeeded"
    assert readers.job_state(job("FailureTarget")).state == "failed"
    suspended = readers.job_state({"spec": {"suspend": True}})
    assert (suspended.reason, suspended.message) == (
        "Queued",
        "the Job is suspended until its queue admits it",
    )
