"""Pure builders for a multi-node train step (``spec.resources.nodes`` > 1): plain values in,
Kubernetes-shaped dicts out, like ``builders``.

The step runs as an **Indexed Job** (one pod per node, ``completions = parallelism = nodes``)
plus a **headless Service** whose name is the pods' ``subdomain``: the Job controller names each
pod's host ``<job>-<index>``, so pod 0 is ``<job>-0.<service>.<namespace>.svc`` for as long as it
runs, and every pod starts torchrun with a static rendezvous on it (node rank =
``JOB_COMPLETION_INDEX``, which Kubernetes sets). One failed pod fails the whole Job at once
(``backoffLimit`` 0 + a ``FailJob`` rule), and the Job controller then stops the others: a static
rendezvous cannot take a replacement pod, so nothing would be gained by retrying one index, and
nobody is left waiting for a peer that will not come. Kueue sees one Job with one pod set of
``nodes`` pods, so a queue admits all of them or none. Which node failed is read back by
``readers.failed_node``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zthumb_contract import env as contract_env
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.steps import RENDEZVOUS_PORT, StepDefinition

from zthumb_operator import builders as b


def step_job_name(run_name: str, step: StepDefinition) -> str:
    """Any step's Job name: ``builders.single_node_job_name``, except that a multi-node Job's name must leave
    room for ``-<index>`` in a 63-character host name, without dots (the Job controller sets each
    pod's hostname to ``<job>-<index>``; an invalid one would make every pod creation fail)."""
    if step.nodes <= 1:
        return b.single_node_job_name(run_name, step.name)
    limit = b.MAX_NAME - len(f"-{step.nodes - 1}")
    name = b.single_node_job_name(run_name, step.name)
    if len(name) <= limit and "." not in name:
        return name
    # Hash the run name as given, so "a.b" and "a-b" never share a Job.
    head = run_name.replace(".", "-")[: limit - len(step.name) - 10].rstrip("-")
    return f"{head}-{b.short_hash(run_name)}-{step.name}"


def service_name(job: str) -> str:
    """The headless Service (= the pods' subdomain): a DNS-1035 label, so it starts with a letter."""
    return job if job[0].isalpha() else f"n{job}"


def master_addr(job: str, namespace: str) -> str:
    """Pod 0's stable DNS name (resolved through the pod's DNS search list to the cluster domain)."""
    return f"{job}-0.{service_name(job)}.{namespace}.svc"


def build_service(run: Mapping[str, Any], job: str, step: StepDefinition) -> dict[str, Any]:
    """The headless Service that gives each pod of ``job`` a DNS name, owned by the run (the
    garbage collector deletes it with the LoRAFinetune)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(job),
            "namespace": run["metadata"]["namespace"],
            "labels": b.run_labels(run["metadata"]["name"], step.name),
            "ownerReferences": [b.owner_reference(run)],
        },
        "spec": {
            "clusterIP": "None",
            # Records exist as soon as a pod has an IP: the trainers resolve pod 0 while starting,
            # long before anything could be called ready (the pods have no readiness probe).
            "publishNotReadyAddresses": True,
            "selector": {b.JOB_NAME_LABEL: job},
            "ports": [
                {
                    "name": "rendezvous",
                    "port": RENDEZVOUS_PORT,
                    "targetPort": RENDEZVOUS_PORT,
                    "protocol": "TCP",
                }
            ],
        },
    }


def build_indexed_job(
    step: StepDefinition,
    *,
    run: Mapping[str, Any],
    spec: LoRAFinetuneSpec,
    settings: b.JobSettings,
) -> dict[str, Any]:
    """The Indexed Job of a multi-node step: ``builders.build_job``'s pod, ``step.nodes`` times."""
    job = b.build_job(step, run=run, spec=spec, settings=settings)
    name = step_job_name(run["metadata"]["name"], step)
    namespace = run["metadata"]["namespace"]
    job["metadata"]["name"] = name
    job_spec = job["spec"]
    job_spec.update(
        {
            "completionMode": "Indexed",
            "completions": step.nodes,
            "parallelism": step.nodes,
            # Any failure of any pod (an exit code, an eviction, a deleted pod) fails the Job; the
            # Job controller then terminates the other pods, which would otherwise wait in a
            # collective for a peer that is gone.
            "backoffLimit": 0,
            # The same for a non-zero exit, but with the pod and its exit code in the Job's Failed
            # condition (reason PodFailurePolicy) instead of a bare BackoffLimitExceeded.
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": step.name, "operator": "NotIn", "values": [0]},
                    }
                ]
            },
        }
    )
    pod_spec = job_spec["template"]["spec"]
    pod_spec["subdomain"] = service_name(name)
    (container,) = pod_spec["containers"]
    container["env"] += [
        {"name": contract_env.MASTER_ADDR, "value": master_addr(name, namespace)},
        {"name": contract_env.MASTER_PORT, "value": str(RENDEZVOUS_PORT)},
    ]
    container["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}]
    return job
