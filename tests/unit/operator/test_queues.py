"""Kueue capacity: a run its queue can never admit whole is refused up front (queues.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from reconcile_harness import Harness
from zthumb_operator import queues


def cluster_queue(
    gpus: str = "2", cpu: str = "64", cohort: str | None = None, **extra: Any
) -> dict[str, Any]:
    resources = [
        {"name": "cpu", "nominalQuota": cpu},
        {"name": "nvidia.com/gpu", "nominalQuota": gpus, **extra},
    ]
    spec: dict[str, Any] = {
        "resourceGroups": [{"coveredResources": ["cpu", "nvidia.com/gpu"],
                            "flavors": [{"name": "h100", "resources": resources}]}]
    }  # fmt: skip
    if cohort:
        spec["cohort"] = cohort
    return {"metadata": {"name": "gpu-cq"}, "spec": spec}


def job(pods: int, gpus: str, cpu: str = "4") -> dict[str, Any]:
    container = {"resources": {"requests": {"cpu": cpu}, "limits": {"cpu": cpu, "nvidia.com/gpu": gpus}}}
    return {"spec": {"parallelism": pods, "template": {"spec": {"containers": [container]}}}}


def test_a_workload_is_every_pod_of_the_job() -> None:
    assert queues.workload_requests(job(3, "2")) == {"cpu": Decimal(12), "nvidia.com/gpu": Decimal(6)}


@pytest.mark.parametrize(
    ("queue", "most"),
    [
        (cluster_queue("2"), Decimal(2)),
        (cluster_queue("2", cohort="team"), None),  # may borrow without a limit
        (cluster_queue("2", cohort="team", borrowingLimit="2"), Decimal(4)),
        (cluster_queue("2", borrowingLimit="2"), Decimal(2)),  # no cohort: nothing to borrow from
        ({"spec": {"cohortName": "team", **cluster_queue("1")["spec"]}}, None),  # v1beta2's name
        ({"spec": {}}, None),  # the queue does not list the resource: left to Kueue
    ],
)
def test_the_most_one_workload_can_get(queue: dict[str, Any], most: Decimal | None) -> None:
    assert queues.most_admissible(queue, "nvidia.com/gpu") == most


def test_the_largest_flavor_bounds_a_workload() -> None:
    queue = cluster_queue("1")
    queue["spec"]["resourceGroups"][0]["flavors"].append(
        {"name": "h200", "resources": [{"name": "nvidia.com/gpu", "nominalQuota": "8"}]}
    )
    assert queues.most_admissible(queue, "nvidia.com/gpu") == Decimal(8)


def test_shortfalls_name_the_field_to_change() -> None:
    short = queues.shortfalls([job(1, "0", cpu="1"), job(4, "1")], cluster_queue("2", cpu="8"))
    assert [(s.resource, s.needed, s.most, s.pods) for s in short] == [
        ("cpu", Decimal(16), Decimal(8), 4), ("nvidia.com/gpu", Decimal(4), Decimal(2), 4)
    ]  # fmt: skip
    message = queues.describe(short, gpu_resource="nvidia.com/gpu", queue="team-a", cluster_queue="gpu-cq")
    assert message.startswith(
        "spec.resources.cpu: the Job asks for 16 cpu (4 pod(s)), but ClusterQueue gpu-cq"
    )
    assert "spec.resources.nodes: the Job asks for 4 nvidia.com/gpu (4 pod(s))" in message
    assert "can give one workload at most 2" in message
    single = queues.shortfalls([job(1, "4")], cluster_queue("2"))
    assert queues.describe(single, gpu_resource="nvidia.com/gpu", queue="q", cluster_queue="c").startswith(
        "spec.resources.gpus: "
    )


QUEUED = {"dataset": {"triggerWord": "z"}, "queueName": "team-a", "resources": {"nodes": 2, "gpus": 1}}


def with_queue(h: Harness, queue: dict[str, Any]) -> Harness:
    h.api.kueue[("localqueues", "ml", "team-a")] = {"spec": {"clusterQueue": "gpu-cq"}}
    h.api.kueue[("clusterqueues", None, "gpu-cq")] = queue
    return h


def test_more_nodes_than_the_queue_can_ever_admit_fail_before_the_first_job() -> None:
    h = with_queue(Harness(QUEUED), cluster_queue("1"))
    h.reconcile()
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Failed", "InvalidSpec")
    assert st["message"].startswith("spec.resources.nodes: the Job asks for 2 nvidia.com/gpu (2 pod(s))")
    assert h.api.creates == []


def test_a_queue_that_can_admit_the_run_lets_it_queue() -> None:
    h = with_queue(Harness(QUEUED), cluster_queue("2"))
    h.reconcile()
    assert h.status()["phase"] == "Pending"  # the first Job is created suspended: Queued
    assert h.api.creates == ["z-style-fetch-model"]


@pytest.mark.parametrize("case", ["no queue objects", "forbidden"])
def test_what_the_operator_cannot_read_is_left_to_kueue(case: str) -> None:
    h = Harness(QUEUED)
    h.api.kueue_forbidden = case == "forbidden"
    h.reconcile()
    assert h.api.creates == ["z-style-fetch-model"]
