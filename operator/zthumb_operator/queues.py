"""Kueue capacity: a run its queue can never admit is refused up front, naming the field.

Kueue admits a Job as one workload: every pod of it (an Indexed train Job: one pod per node) or
none. A ClusterQueue gives one workload at most, per resource, the quota of one flavor plus what
that flavor may borrow from its cohort; a Job that asks for more waits suspended forever, which is
the hang users of queued multi-node training complain about. So before creating a queued Job the
operator reads the LocalQueue named by ``spec.queueName`` and its ClusterQueue and compares.

What cannot be known is let through to Kueue: no Kueue installed, a LocalQueue that does not exist
(yet), no permission to read ClusterQueues (a namespace-scoped install), or a flavor that may
borrow without a limit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

log = logging.getLogger("zthumb_operator")

KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta1"  # served by every Kueue release since 0.3 (0.17 also serves v1beta2)

# The spec field that sets each resource of a step pod (for the error message).
FIELD_OF_RESOURCE = {"cpu": "spec.resources.cpu", "memory": "spec.resources.memory"}


def workload_requests(job: Mapping[str, Any]) -> dict[str, Decimal]:
    """What Kueue charges the queue for ``job``: its pod's container requests (limits where a
    container has no request) times ``parallelism``."""
    spec = job.get("spec") or {}
    pods = int(spec.get("parallelism") or 1)
    totals: dict[str, Decimal] = {}
    for container in ((spec.get("template") or {}).get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        asked = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, value in asked.items():
            totals[name] = totals.get(name, Decimal(0)) + parse_quantity(value)
    return {name: amount * pods for name, amount in totals.items()}


def most_admissible(cluster_queue: Mapping[str, Any], resource: str) -> Decimal | None:
    """The most of ``resource`` the ClusterQueue can ever give one workload: the largest nominal
    quota of a flavor that covers it, plus that flavor's borrowing limit when the queue is in a
    cohort. None: no bound (borrowing without a limit, or the queue does not list the resource)."""
    spec = cluster_queue.get("spec") or {}
    in_cohort = bool(spec.get("cohort") or spec.get("cohortName"))  # v1beta1 / v1beta2
    best: Decimal | None = None
    for group in spec.get("resourceGroups") or []:
        for flavor in group.get("flavors") or []:
            for quota in flavor.get("resources") or []:
                if quota.get("name") != resource:
                    continue
                most = parse_quantity(quota.get("nominalQuota", 0))
                if in_cohort:
                    if quota.get("borrowingLimit") is None:
                        return None
                    most += parse_quantity(quota["borrowingLimit"])
                best = most if best is None else max(best, most)
    return best


@dataclass(frozen=True)
class Shortfall:
    resource: str
    needed: Decimal  # the whole Job's
    most: Decimal
    pods: int


def shortfalls(jobs: Sequence[Mapping[str, Any]], cluster_queue: Mapping[str, Any]) -> list[Shortfall]:
    """The resources that ``cluster_queue`` can never give one of ``jobs`` in full (the largest
    shortfall of each resource)."""
    worst: dict[str, Shortfall] = {}
    for job in jobs:
        pods = int((job.get("spec") or {}).get("parallelism") or 1)
        for resource, needed in workload_requests(job).items():
            most = most_admissible(cluster_queue, resource)
            if most is None or needed <= most:
                continue
            if resource not in worst or needed > worst[resource].needed:
                worst[resource] = Shortfall(resource, needed, most, pods)
    return [worst[resource] for resource in sorted(worst)]


def describe(shortfall: Sequence[Shortfall], *, gpu_resource: str, queue: str, cluster_queue: str) -> str:
    """The refusal, naming the spec fields to change."""
    parts = []
    for short in shortfall:
        if short.resource == gpu_resource:
            field = "spec.resources.nodes" if short.pods > 1 else "spec.resources.gpus"
        else:
            field = FIELD_OF_RESOURCE.get(short.resource, f"spec.resources ({short.resource})")
        parts.append(
            f"{field}: the Job asks for {short.needed:f} {short.resource} ({short.pods} pod(s)), but "
            f"ClusterQueue {cluster_queue} (LocalQueue {queue}) can give one workload at most {short.most:f}"
        )
    return (
        "; ".join(parts)
        + ". Kueue admits all pods of a Job or none, so it would wait forever: lower the request, "
        "or raise the ClusterQueue's nominalQuota (or borrowingLimit)."
    )
