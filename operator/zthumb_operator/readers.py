"""Readers: what a step's Job and its pods amount to for the run (plain dicts in, values out;
no I/O). The Job's conditions give its state; the pods' termination messages carry the step's
own numbers (the eval summary, the train results) and a failure's last log lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zthumb_contract.crd import parse_time
from zthumb_contract.results import EvalSummary, TrainResults


@dataclass(frozen=True)
class JobState:
    """What a step's Job amounts to for the run."""

    state: str  # "running", "suspended", "unschedulable", "succeeded", "failed"
    reason: str = ""
    message: str = ""
    since: str | None = None  # unschedulable: when the pod was found unschedulable


def _job_condition(job: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return cond
    return None


def terminated_messages(pods: Iterable[Mapping[str, Any]]) -> list[str]:
    """Termination messages of the pods' terminated containers, newest pod last."""
    out = []
    ordered = sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")
    for pod in ordered:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            msg = (term.get("message") or "").strip()
            if msg:
                out.append(msg)
    return out


def job_state(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = ()) -> JobState:
    """Read a Job (and its pods) into a ``JobState``."""
    if _job_condition(job, "Complete") or _job_condition(job, "SuccessCriteriaMet"):
        return JobState("succeeded")
    failed = _job_condition(job, "Failed") or _job_condition(job, "FailureTarget")
    if failed:
        reason = failed.get("reason") or "Failed"
        message = failed.get("message") or "the Job failed"
        logs = terminated_messages(pods)
        if logs:
            message = f"{message}; last container message: {logs[-1][-1000:]}"
        return JobState("failed", reason, message)
    if (job.get("spec") or {}).get("suspend"):
        return JobState("suspended", "Queued", "the Job is suspended until its queue admits it")
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") not in (None, "Pending"):
            continue
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return JobState(
                    "unschedulable",
                    cond.get("reason") or "Unschedulable",
                    cond.get("message") or "the pod cannot be scheduled",
                    cond.get("lastTransitionTime"),
                )
    return JobState("running")


def step_duration_seconds(job: Mapping[str, Any]) -> float | None:
    """Seconds from the Job's start to its completion, when both are known."""
    status = job.get("status") or {}
    start, end = status.get("startTime"), status.get("completionTime")
    if not start or not end:
        return None
    return max(0.0, parse_time(end) - parse_time(start))


def _json_messages(pods: Sequence[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """The pods' termination messages that are JSON objects, newest first (a failed try's
    message is its log tail, FallbackToLogsOnError, and is skipped)."""
    for message in reversed(terminated_messages(pods)):
        try:
            data = json.loads(message)
        except ValueError:
            continue
        if isinstance(data, dict):
            yield data


def eval_summary(pods: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """``status.evalSummary``: the eval pod's termination message (a JSON object) read through
    ``EvalSummary``, each bad value dropped on its own; None when there is none."""
    for data in _json_messages(pods):
        results = EvalSummary.from_report(data)
        if results is not None:
            return results.status()
    return None


def train_results(pods: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """``status.training``: the ``training`` block of the train pod's summary (termination message)."""
    for data in _json_messages(pods):
        results = TrainResults.from_report(data.get("training"))
        if results is not None:
            return results.status()
    return None


# --------------------------------------------------------------------------- a multi-node Job

# Set by the Job controller on the pods of an Indexed Job.
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def _failures(pods: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, str, Mapping[str, Any]]]:
    """(finishedAt, index, pod name, terminated state) of every container that exited non-zero."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        index = (meta.get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION, "?")
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term and term.get("exitCode") not in (None, 0):
                out.append((term.get("finishedAt") or "", index, meta.get("name", "?"), term))
    return out


def failed_node(pods: Iterable[Mapping[str, Any]], job_message: str = "") -> str | None:
    """Which pod (index) of a multi-node Job failed first, and why: its exit code, reason and the
    tail of its termination message (the others usually fail or are stopped because of it).

    First = the pod the Job's failure message names (the Job controller's ``FailJob`` verdict:
    ``... for pod <ns>/<name> failed with exit code ...``), else the earliest ``finishedAt``: the
    peers of a dead process often exit within the same second, and timestamps have seconds only.
    """
    failures = sorted(_failures(pods), key=lambda f: (f"/{f[2]} " not in job_message, f[0]))
    if not failures:
        return None
    _, index, name, term = failures[0]
    text = f"node {index} (pod {name}) failed first: exit code {term.get('exitCode')}"
    if term.get("reason"):
        text += f" ({term['reason']})"
    message = (term.get("message") or "").strip()
    if len(message) > 1000:  # the tail (a traceback ends with its cause), from a line start
        message = message[-1000:].split("\n", 1)[-1]
    if message:
        text += f": {message}"
    others = sorted({index_ for _, index_, _, _ in failures[1:]} - {index})
    if others:
        text += f"; also failed: node {', '.join(others)}"
    return text


def failure_message(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> str:
    """A failed multi-node Job's status message: the Job's own reason, then the node that failed
    (instead of ``job_state``'s newest pod, which is usually one the Job controller stopped)."""
    message = job_state(job).message  # without pods: the Job's Failed condition only
    node = failed_node(pods, message)
    return f"{message}; {node}" if node else message
