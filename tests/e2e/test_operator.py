"""The LoRAFinetune operator end to end on the local control plane (docs/ARCHITECTURE.md).

Each test gets a fresh namespace enforcing Pod Security ``restricted`` and its own
operator process, namespace-scoped and authenticated as its own ServiceAccount
(a kubeconfig holding only a TokenRequest token), bound by the namespaced Role of
manifests/operator/namespaced/: every request the operator makes goes through RBAC.
kwok runs the step pods (Job pods complete at once, other pods become Ready); the
eval summary comes from the operator's test hook ZTHUMB_OPERATOR_SIMULATED_EVAL_SUMMARY.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from operator_harness import (
    EXAMPLE,
    PHASE_TIMEOUT,
    RUN,
    Kubectl,
    Operator,
    condition,
    example,
    free_port,
    in_namespace,
    jobs,
    lft,
    wait_phase,
)
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e


def finished_reconciles(port: int) -> float:
    """Reconciles an operator has finished, from its metrics endpoint on ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        families = text_string_to_metric_families(answer.read().decode())
    samples = [s for family in families for s in family.samples]
    return sum(s.value for s in samples if s.name == "zthumb_operator_reconcile_duration_seconds_count")


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_pipeline_succeeds_deploys_and_cascades(
    setup: Callable[..., Operator], namespace: str, kubectl: Kubectl, wait_until: Callable[..., Any]
) -> None:
    ns = namespace
    op = setup()
    old_rs = {
        rs["metadata"]["name"]
        for rs in json.loads(kubectl("get", "rs", "-n", ns, "-o", "json").stdout)["items"]
    }
    kubectl("apply", "-f", "-", input=in_namespace(EXAMPLE.read_text(), ns))
    obj = wait_phase(kubectl, wait_until, ns, "Succeeded", op)
    status = obj["status"]
    assert condition(obj, "Ready")["status"] == "True"
    for ctype in ("ModelFetched", "DatasetPrepared", "Trained", "Deployed", "Evaluated"):
        assert condition(obj, ctype)["status"] == "True", ctype
    assert status["adapterPath"] == "/data/models/lora/z-style"
    assert status["reportPath"] == "/data/outputs/lora_eval/z-style/report.md"
    assert status["evalSummary"] == {"requests": 8, "meanPixelDifference": 0.12}
    assert status["deploy"]["previousEnv"] == {"Z_LORA_PATH": "/data/models/lora/previous"}
    assert status["observedGeneration"] == 1
    assert status["startTime"] and status["completionTime"]
    assert status["progress"]["percent"] == 100

    # one Job per step, each owned by the run
    by_step = {j["metadata"]["labels"]["zthumb.io/step"]: j for j in jobs(kubectl, ns)}
    assert sorted(by_step) == ["eval", "fetch-model", "prepare-dataset", "train"]
    for job in by_step.values():
        assert job["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    train_pod = by_step["train"]["spec"]["template"]["spec"]
    assert train_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    eval_args = by_step["eval"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"http://zthumb.{ns}.svc:8080" in eval_args
    # The server's API key: the same Secret reference as the server's, never the key.
    eval_env = by_step["eval"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {
        "name": "ZTHUMB_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "zthumb-api-key", "key": "api-key"}},
    } in eval_env
    assert "e2e-generated-key" not in json.dumps(by_step["eval"])

    # the Deployment carries the adapter, a new ReplicaSet rolled out, the lock is released
    dep = json.loads(kubectl("get", "deployment", "zthumb", "-n", ns, "-o", "json").stdout)
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["Z_LORA_PATH"] == "/data/models/lora/z-style"
    assert env["Z_LORA_SCALE"] == "0.8"
    assert "zthumb.io/rollout-owner" not in (dep["metadata"].get("annotations") or {})
    rs_list = json.loads(kubectl("get", "rs", "-n", ns, "-o", "json").stdout)["items"]
    new = [rs for rs in rs_list if rs["metadata"]["name"] not in old_rs]
    assert len(new) == 1 and new[0]["status"].get("availableReplicas") == 1
    assert dep["status"]["updatedReplicas"] == dep["status"]["availableReplicas"] == 1

    # kubectl get shows the columns; describe tells the story
    table = kubectl("get", "lft", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "AGE"]
    assert table[1].split()[:3] == [RUN, "Succeeded", "100"]
    wide = kubectl("get", "lft", "-n", ns, "-o", "wide").stdout.splitlines()[0].split()
    assert wide == [
        "NAME", "PHASE", "PROGRESS", "AGE", "ETA", "REPORT", "STEPS/S", "CLIP-I", "GAIN", "CLIP-T", "DROP",
        "LEAKAGE", "RECOMMENDED", "MESSAGE",
    ]  # fmt: skip
    described = kubectl("describe", "lft", RUN, "-n", ns).stdout
    for reason in (
        "Accepted",
        "JobCreated",
        "TrainCompleted",
        "RolloutStarted",
        "DeployCompleted",
        "Succeeded",
    ):
        assert reason in described, reason

    # deleting the run removes its Jobs (owner references + garbage collector)
    kubectl("delete", "lft", RUN, "-n", ns)
    wait_until(lambda: not jobs(kubectl, ns), timeout=60, description="Jobs garbage-collected")
    assert op.proc is not None and op.proc.poll() is None, op.log()
    assert "Forbidden" not in op.log() and "forbidden" not in op.log(), op.log()


def test_bad_spec_is_refused_at_apply(crd: None, namespace: str, kubectl: Kubectl) -> None:
    bad = kubectl("apply", "-f", "-", input=example(namespace, training__rank=999), check=False)
    assert bad.returncode != 0
    assert "spec.training.rank" in bad.stderr, bad.stderr
    res = kubectl("apply", "-f", "-", input=example(namespace, dataset__resolution=1000), check=False)
    assert res.returncode != 0 and "spec.dataset.resolution" in res.stderr, res.stderr
    # the eval gate: a threshold out of range, and a gate without a deployed evaluation (CEL)
    res = kubectl("apply", "-f", "-", input=example(namespace, eval__gate={"maxClipTDrop": 3}), check=False)
    assert res.returncode != 0 and "spec.eval.gate.maxClipTDrop" in res.stderr, res.stderr
    ungated = example(
        namespace, eval__gate={"minClipIGain": 0.02}, deploy__enabled=False, eval__enabled=False
    )
    res = kubectl("apply", "-f", "-", input=ungated, check=False)
    assert res.returncode != 0 and "eval.gate needs eval.enabled and deploy.enabled" in res.stderr, res.stderr
    # the spec is immutable once created
    kubectl("apply", "-f", "-", input=example(namespace))
    changed = kubectl("apply", "-f", "-", input=example(namespace, training__rank=8), check=False)
    assert changed.returncode != 0 and "immutable" in changed.stderr, changed.stderr


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_no_gpu_capacity_is_unschedulable_and_pending(
    setup: Callable[..., Operator], namespace: str, kubectl: Kubectl, wait_until: Callable[..., Any]
) -> None:
    op = setup()
    kubectl("apply", "-f", "-", input=example(namespace, resources__gpus=16))
    obj = wait_phase(kubectl, wait_until, namespace, "Pending", op)
    wait_until(
        lambda: condition(lft(kubectl, namespace), "Scheduled"), timeout=30, description="Scheduled condition"
    )
    obj = lft(kubectl, namespace)
    cond = condition(obj, "Scheduled")
    assert cond["status"] == "False" and cond["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in cond["message"]
    assert obj["status"]["reason"] == "Unschedulable"
    assert obj["status"]["jobs"]["train"] == "z-style-train"


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_failing_train_job_fails_the_run_with_a_reason(
    setup: Callable[..., Operator], namespace: str, kubectl: Kubectl, wait_until: Callable[..., Any]
) -> None:
    # The train pod can never run (no 16-GPU node) and the Jobs' activeDeadlineSeconds is
    # short, so the Job controller fails the train Job (DeadlineExceeded).
    op = setup(
        ZTHUMB_OPERATOR_ACTIVE_DEADLINE_SECONDS="5", ZTHUMB_OPERATOR_UNSCHEDULABLE_DEADLINE_SECONDS="600"
    )
    kubectl("apply", "-f", "-", input=example(namespace, resources__gpus=16))
    obj = wait_phase(kubectl, wait_until, namespace, "Failed", op)
    assert obj["status"]["reason"] == "TrainFailed"
    assert "DeadlineExceeded" in obj["status"]["message"]
    assert condition(obj, "Ready")["status"] == "False"
    assert condition(obj, "Trained")["status"] == "False"
    assert "TrainFailed" in kubectl("describe", "lft", RUN, "-n", namespace).stdout


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_rollout_that_never_becomes_available_is_rolled_back(
    setup: Callable[..., Operator], namespace: str, kubectl: Kubectl, wait_until: Callable[..., Any]
) -> None:
    ns = namespace
    op = setup()
    # New server pods can never be scheduled (the old one keeps serving).
    kubectl(
        "patch", "deployment", "zthumb", "-n", ns, "--type=merge",
        "-p", '{"spec":{"template":{"spec":{"nodeSelector":{"zthumb.io/pool":"nowhere"}}}}}',
    )  # fmt: skip
    kubectl("apply", "-f", "-", input=example(ns, deploy__rolloutTimeoutSeconds=10))
    obj = wait_phase(kubectl, wait_until, ns, "Failed", op, timeout=PHASE_TIMEOUT + 20)
    assert obj["status"]["reason"] == "RolloutFailed"
    assert obj["status"]["deploy"]["rolledBack"] is True
    dep = json.loads(kubectl("get", "deployment", "zthumb", "-n", ns, "-o", "json").stdout)
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["Z_LORA_PATH"] == "/data/models/lora/previous"
    assert "Z_LORA_SCALE" not in env
    assert "zthumb.io/rollout-owner" not in (dep["metadata"].get("annotations") or {})
    assert dep["status"].get("availableReplicas") == 1  # the old pod still serves
    assert "RolledBack" in kubectl("describe", "lft", RUN, "-n", ns).stdout


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_a_failed_eval_gate_rolls_the_deployment_back(
    setup: Callable[..., Operator], namespace: str, kubectl: Kubectl, wait_until: Callable[..., Any]
) -> None:
    ns = namespace
    op = setup()
    # The simulated eval pods report a mean pixel difference of 0.12 (operator_harness.py).
    kubectl("apply", "-f", "-", input=example(ns, eval__gate={"minMeanPixelDifference": 1}))
    obj = wait_phase(kubectl, wait_until, ns, "Failed", op, timeout=PHASE_TIMEOUT + 20)
    assert obj["status"]["reason"] == "EvalGateFailed", obj["status"]
    assert "meanPixelDifference 0.12 < min 1" in obj["status"]["message"]
    assert obj["status"]["evalGate"]["passed"] is False
    assert obj["status"]["deploy"]["rolledBack"] is True
    assert condition(obj, "Deployed")["status"] == "True"
    assert condition(obj, "Evaluated")["reason"] == "EvalGateFailed"
    dep = json.loads(kubectl("get", "deployment", "zthumb", "-n", ns, "-o", "json").stdout)
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["Z_LORA_PATH"] == "/data/models/lora/previous"
    assert "Z_LORA_SCALE" not in env
    assert "EvalGateFailed" in kubectl("describe", "lft", RUN, "-n", ns).stdout


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_a_literal_server_key_is_never_copied_and_stops_the_run_before_its_rollout(
    setup: Callable[..., Operator], namespace: str, kubectl: Kubectl, wait_until: Callable[..., Any]
) -> None:
    ns = namespace
    op = setup()
    literal = {"name": "ZTHUMB_API_KEY", "value": "s3cret-literal"}
    patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/env/2", "value": literal}]
    kubectl("patch", "deployment", "zthumb", "-n", ns, "--type=json", "-p", json.dumps(patch))
    kubectl("rollout", "status", "deployment/zthumb", "-n", ns, "--timeout=60s", timeout=90)
    kubectl("apply", "-f", "-", input=example(ns))
    obj = wait_phase(kubectl, wait_until, ns, "Failed", op)
    assert obj["status"]["reason"] == "ApiKeyNotInSecret", obj["status"]
    assert "literal value" in obj["status"]["message"] and "secretKeyRef" in obj["status"]["message"]
    assert "not rolled out" in obj["status"]["message"]
    assert "s3cret-literal" not in json.dumps(obj)
    assert "eval" not in {j["metadata"]["labels"]["zthumb.io/step"] for j in jobs(kubectl, ns)}
    dep = json.loads(kubectl("get", "deployment", "zthumb", "-n", ns, "-o", "json").stdout)
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["Z_LORA_PATH"] == "/data/models/lora/previous"
    assert "zthumb.io/rollout-owner" not in (dep["metadata"].get("annotations") or {})


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_operator_killed_mid_run_resumes_without_duplicate_jobs(
    setup: Callable[..., Operator], namespace: str, kubectl: Kubectl, wait_until: Callable[..., Any]
) -> None:
    ns = namespace
    op = setup()
    # gpus: 16 holds the run at the train step (no node fits) while the operator dies.
    node_label = f"zthumb.io/e2e-{ns}"
    kubectl(
        "apply", "-f", "-", input=example(ns, resources__gpus=16, resources__nodeSelector={node_label: "big"})
    )
    wait_until(
        lambda: condition(lft(kubectl, ns), "Scheduled"),
        timeout=PHASE_TIMEOUT,
        description="train Job waiting",
    )
    (train,) = [j for j in jobs(kubectl, ns) if j["metadata"]["labels"]["zthumb.io/step"] == "train"]
    op.kill()

    port = free_port()
    op2 = setup(ZTHUMB_OPERATOR_METRICS_PORT=str(port))  # restarted: must adopt the existing Jobs
    wait_until(
        lambda: finished_reconciles(port) >= 1,
        timeout=PHASE_TIMEOUT,
        description="the restarted operator to reconcile the waiting run",
    )
    waiting = [j for j in jobs(kubectl, ns) if j["metadata"]["labels"]["zthumb.io/step"] == "train"]
    assert [j["metadata"]["uid"] for j in waiting] == [train["metadata"]["uid"]]  # adopted, not a second
    # capacity appears: a 16-GPU kwok node only this run selects
    node = f"zthumb-e2e-{ns}"[:63]
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "16"}
    big_node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {node_label: "big", "type": "kwok", "kubernetes.io/os": "linux"},
        },
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"capacity": capacity, "allocatable": capacity},
    }
    kubectl("apply", "-f", "-", input=json.dumps(big_node))
    try:
        wait_phase(kubectl, wait_until, ns, "Succeeded", op2, timeout=PHASE_TIMEOUT + 30)
    finally:
        kubectl("delete", "node", node, "--wait=false", check=False)
    all_jobs = jobs(kubectl, ns)
    steps = sorted(j["metadata"]["labels"]["zthumb.io/step"] for j in all_jobs)
    assert steps == ["eval", "fetch-model", "prepare-dataset", "train"]
    (train_after,) = [j for j in all_jobs if j["metadata"]["labels"]["zthumb.io/step"] == "train"]
    assert train_after["metadata"]["uid"] == train["metadata"]["uid"]  # adopted, not recreated


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_kueue_queue_name_creates_suspended_jobs_shown_as_queued(
    setup: Callable[..., Operator], namespace: str, kubectl: Kubectl, wait_until: Callable[..., Any]
) -> None:
    op = setup()
    kubectl("apply", "-f", "-", input=example(namespace, queueName="team-a"))

    def queued() -> dict[str, Any] | None:
        obj = lft(kubectl, namespace)
        return obj if (obj.get("status") or {}).get("reason") == "Queued" else None

    obj = wait_until(queued, timeout=PHASE_TIMEOUT, description="reason Queued")
    assert obj["status"]["phase"] == "Pending", op.log()
    (job,) = jobs(kubectl, namespace)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
