"""What Kueue would charge a Job and the most a ClusterQueue can give one workload: the numbers
behind the refusal of a run that would wait forever."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from zthumb_operator import queues


def job(containers: list[dict[str, Any]], parallelism: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"template": {"spec": {"containers": containers}}}
    if parallelism is not None:
        spec["parallelism"] = parallelism
    return {"spec": spec}


def queue(*flavors: list[dict[str, Any]], cohort: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"resourceGroups": [{"flavors": [{"resources": r} for r in flavors]}]}
    if cohort:
        spec["cohort"] = cohort
    return {"spec": spec}


def test_a_request_wins_over_a_limit_and_containers_add_up() -> None:
    containers = [
        {"resources": {"limits": {"cpu": "4", "memory": "1Gi"}, "requests": {"cpu": "2"}}},
        {"resources": {"requests": {"cpu": "500m"}}},
        {},
    ]
    assert queues.workload_requests(job(containers)) == {"cpu": Decimal("2.5"), "memory": Decimal(2**30)}
    # Every pod of the Job is charged.
    assert queues.workload_requests(job(containers, parallelism=3))["cpu"] == Decimal("7.5")


def test_the_most_a_queue_gives_is_its_largest_flavor_plus_borrowing_in_a_cohort() -> None:
    flavors = ([{"name": "cpu", "nominalQuota": "8"}], [{"name": "cpu", "nominalQuota": "2"}])
    assert queues.most_admissible(queue(*flavors), "cpu") == Decimal(8)
    assert queues.most_admissible(queue([{"name": "cpu"}]), "cpu") == Decimal(0)
    assert queues.most_admissible(queue(*flavors), "memory") is None
    borrowing = [{"name": "cpu", "nominalQuota": "2", "borrowingLimit": "3"}]
    assert queues.most_admissible(queue(borrowing, cohort="all"), "cpu") == Decimal(5)
    # Outside a cohort nothing is borrowed.
    assert queues.most_admissible(queue(borrowing), "cpu") == Decimal(2)
    # In a cohort without a borrowing limit there is no bound.
    assert queues.most_admissible(queue([{"name": "cpu", "nominalQuota": "2"}], cohort="all"), "cpu") is None


def test_the_largest_shortfall_of_each_resource_is_kept() -> None:
    small = queue([{"name": "cpu", "nominalQuota": "1"}, {"name": "example.com/fpga", "nominalQuota": "0"}])
    one = job([{"resources": {"requests": {"cpu": "4"}}}])
    two = job([{"resources": {"requests": {"cpu": "2"}}}], parallelism=2)
    # Equal needs: the first Job's stays.
    [short] = queues.shortfalls([one, two], small)
    assert (short.resource, short.needed, short.most, short.pods) == ("cpu", Decimal(4), Decimal(1), 1)
    [short] = queues.shortfalls([two, one], small)
    assert short.pods == 2
    bigger = job([{"resources": {"requests": {"cpu": "3"}}}], parallelism=2)
    [short] = queues.shortfalls([one, bigger], small)
    assert (short.needed, short.pods) == (Decimal(6), 2)
    fpga = job([{"resources": {"requests": {"example.com/fpga": "1"}}}])
    text = queues.describe(
        queues.shortfalls([fpga, one], small),
        gpu_resource="nvidia.com/gpu",
        queue="team",
        cluster_queue="gpus",
    )
    assert text == (
        "spec.resources.cpu: the Job asks for 4 cpu (1 pod(s)), but ClusterQueue gpus (LocalQueue team) "
        "can give one workload at most 1; spec.resources (example.com/fpga): the Job asks for 1 "
        "example.com/fpga (1 pod(s)), but ClusterQueue gpus (LocalQueue team) can give one workload at "
        "most 0. Kueue admits all pods of a Job or none, so it would wait forever: lower the request, "
        "or raise the ClusterQueue's nominalQuota (or borrowingLimit)."
    )
