"""Multi-node training (spec.resources.nodes > 1): the Indexed Job, its headless Service and the
failed-node status, built without a cluster."""

from __future__ import annotations

import re
from typing import Any

import pytest
from lft_helpers import make_run
from zthumb_contract import env
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.stages import build_steps
from zthumb_contract.steps import RENDEZVOUS_PORT, StepDefinition
from zthumb_operator import builders as b
from zthumb_operator import multinode as mn

SETTINGS = b.JobSettings(image="registry.example/trainer:1")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def build(run: dict[str, Any]) -> tuple[StepDefinition, dict[str, Any], dict[str, Any]]:
    spec = LoRAFinetuneSpec.from_manifest(run)
    steps = {s.name: s for s in build_steps(run["metadata"]["name"], spec, "/data", "http://x")}
    train = steps["train"]
    job = mn.build_indexed_job(train, run=run, spec=spec, settings=SETTINGS)
    service = mn.build_service(run, job["metadata"]["name"], train)
    return train, job, service


def multi_run(**spec: Any) -> dict[str, Any]:
    resources = {
        "nodes": 2,
        "gpus": 4,
        "nodeSelector": {"zthumb.io/pool": "gpu"},
        **spec.pop("resources", {}),
    }
    return make_run({"resources": resources, **spec})


def test_indexed_job_one_pod_per_node_with_the_single_pods_template() -> None:
    run = multi_run()
    train, job, _ = build(run)
    spec = LoRAFinetuneSpec.from_manifest(run)
    single = b.build_job(train, run=run, spec=spec, settings=SETTINGS)
    js = job["spec"]
    assert job["metadata"]["name"] == "z-style-train"
    assert (js["completionMode"], js["completions"], js["parallelism"]) == ("Indexed", 2, 2)
    pod, single_pod = js["template"]["spec"], single["spec"]["template"]["spec"]
    (c,), (single_c,) = pod["containers"], single_pod["containers"]
    # The same command line (with --nodes 2), resources, security and volumes as one pod.
    assert c["args"] == single_c["args"] == list(train.args)
    assert c["args"][c["args"].index("--nodes") + 1] == "2"
    assert c["resources"] == single_c["resources"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert c["securityContext"] == single_c["securityContext"]
    assert pod["volumes"] == single_pod["volumes"] and pod["nodeSelector"] == {"zthumb.io/pool": "gpu"}
    assert js["template"]["metadata"]["labels"] == single["spec"]["template"]["metadata"]["labels"]
    assert job["metadata"]["ownerReferences"] == [b.owner_reference(run)]


def test_one_failed_pod_fails_the_whole_job() -> None:
    _, job, _ = build(multi_run())
    js = job["spec"]
    assert js["backoffLimit"] == 0
    assert "backoffLimitPerIndex" not in js  # per index would let the other pods run on, alone
    (rule,) = js["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"] == {"containerName": "train", "operator": "NotIn", "values": [0]}
    # podFailurePolicy needs restartPolicy Never and (since 1.29) podReplacementPolicy Failed.
    assert js["template"]["spec"]["restartPolicy"] == "Never"
    assert js["podReplacementPolicy"] == "Failed"
    assert js["activeDeadlineSeconds"] == SETTINGS.active_deadline_seconds


def test_static_rendezvous_on_pod_zero_through_the_headless_service() -> None:
    _, job, service = build(multi_run())
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    values = {e["name"]: e.get("value") for e in c["env"]}
    # The pods' subdomain is the Service: pod 0 (hostname <job>-0, set by the Job controller) is
    # <job>-0.<service>.<namespace>.svc; the node rank is JOB_COMPLETION_INDEX, set by Kubernetes.
    assert pod["subdomain"] == service["metadata"]["name"] == "z-style-train"
    assert values[env.MASTER_ADDR] == "z-style-train-0.z-style-train.ml.svc"
    assert values[env.MASTER_PORT] == str(RENDEZVOUS_PORT)
    assert env.NODE_RANK not in values  # Kubernetes' own, never overridden
    assert c["ports"] == [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}]
    # The train pod still reports progress (only rank 0 does, in the trainer).
    assert {env.RUN_NAME, env.NAMESPACE} <= set(values)

    spec = service["spec"]
    assert spec["clusterIP"] == "None" and spec["publishNotReadyAddresses"] is True
    assert spec["selector"] == {b.JOB_NAME_LABEL: "z-style-train"}
    assert spec["ports"] == [
        {"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT, "protocol": "TCP"}
    ]
    assert (service["apiVersion"], service["kind"]) == ("v1", "Service")
    assert service["metadata"]["namespace"] == "ml"
    assert job["metadata"]["name"] == "z-style-train"
    # Garbage-collected with the run.
    assert service["metadata"]["ownerReferences"] == [b.owner_reference(make_run())]
    assert service["metadata"]["labels"][b.LABEL_STEP] == "train"


def test_kueue_admits_the_indexed_job_as_one_workload_of_nodes_pods() -> None:
    _, job, _ = build(multi_run(queueName="team-a", resources={"nodes": 8}))
    assert job["metadata"]["labels"][b.KUEUE_QUEUE_LABEL] == "team-a"
    assert job["spec"]["suspend"] is True
    # Kueue's pod set of a batch/v1 Job counts parallelism pods: all nodes at once, or none.
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == 8
    assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize(
    "run_name",
    ["a" * 63, "b" * 57, "0lead-digit", "with.dots.in.name", "x" * 200, "a.b", "a-b"],
)
def test_job_names_leave_room_for_the_index_in_a_valid_hostname(run_name: str) -> None:
    for nodes in (2, 10, 64):
        train = StepDefinition(name="train", args=(), gpu=True, nodes=nodes)
        job = mn.step_job_name(run_name, train)
        hostname = f"{job}-{nodes - 1}"
        assert len(hostname) <= 63 and DNS_LABEL.match(hostname), hostname
        service = mn.service_name(job)
        assert len(service) <= 63 and DNS_LABEL.match(service) and service[0].isalpha(), service
        assert job == mn.step_job_name(run_name, train)  # deterministic: adoption after a restart
    assert mn.step_job_name("a.b", train) != mn.step_job_name("a-b", train)
    # One node: exactly the name builders.single_node_job_name gives every other step.
    one = StepDefinition(name="train", args=(), gpu=True)
    assert mn.step_job_name(run_name, one) == b.single_node_job_name(run_name, "train")
