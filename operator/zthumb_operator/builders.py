"""Pure builders: plain values in, Kubernetes-shaped dicts out (no I/O, no clock, no kopf).

Every step Job the operator sends to the API server is built here from the shared
``StepDefinition``s, so the unit tests can check it without a cluster. What the operator reads
back from Jobs and pods is in ``readers.py``; the Deployment side lives in ``deployments.py``,
the status conditions in ``conditions.py``, the multi-node train step in ``multinode.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zthumb_contract import env as contract_env
from zthumb_contract.crd import API_VERSION, KIND
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.steps import StepDefinition

MANAGED_BY = "zthumb-operator"
LABEL_RUN = "zthumb.io/run"
LABEL_STEP = "zthumb.io/step"
ANNOTATION_RUN = "zthumb.io/run"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Set by the Job controller on the pods of a Job.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"

MAX_NAME = 63  # Job names end up as the pods' job-name label value

SCHEDULED = "Scheduled"

# Small fixed requests for the CPU steps; the train step takes spec.resources.
CPU_STEP_RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}

RESTRICTED_CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def bounded_name(base: str, suffix: str, limit: int = MAX_NAME) -> str:
    """``<base>-<suffix>``; when that exceeds ``limit``, ``<base cut>-<hash>-<suffix>``.

    The hash is of the full base, so two long run names that share a prefix still
    get different names, and the same inputs always give the same name.
    """
    name = f"{base}-{suffix}"
    if len(name) <= limit:
        return name
    keep = limit - len(suffix) - 10  # "-" + 8 hex + "-"
    head = base[:keep].rstrip("-.")
    return f"{head}-{short_hash(base)}-{suffix}"


def single_node_job_name(run_name: str, step_name: str) -> str:
    """The Job name of a one-pod step: ``<run>-<step>``, hashed when too long. A multi-node step's
    Job may need a shorter one: ``multinode.step_job_name`` gives any step's."""
    return bounded_name(run_name, step_name)


# The ServiceAccount of the step pods that mount no token (every step but train).
NO_TOKEN_SERVICE_ACCOUNT = "default"


def run_service_account(run_name: str) -> str:
    """The run's own ServiceAccount, Role and RoleBinding (``identity.py``): the train pod's identity."""
    return bounded_name(run_name, "trainer")


def label_value(value: str) -> str:
    """A label-safe (≤ 63 characters) stand-in for ``value``: itself, or a hashed cut."""
    if len(value) <= MAX_NAME:
        return value
    return f"{value[: MAX_NAME - 9].rstrip('-.')}-{short_hash(value)}"


def run_labels(run_name: str, step: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "zthumb-trainer",
        "app.kubernetes.io/instance": label_value(run_name),
        "app.kubernetes.io/component": step,
        "app.kubernetes.io/part-of": "zthumb",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_RUN: label_value(run_name),
        LABEL_STEP: step,
    }


def owner_reference(run: Mapping[str, Any]) -> dict[str, Any]:
    """Controller owner reference to the LoRAFinetune (the garbage collector cascades deletes)."""
    meta = run["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
    }


@dataclass(frozen=True)
class JobSettings:
    """The operator-wide part of a Job (from the operator's config)."""

    image: str
    run_as_user: int = 10001
    fs_group: int = 10001
    backoff_limit: int = 2
    active_deadline_seconds: int = 172800
    ttl_seconds_after_finished: int = 86400


def _env(step: StepDefinition) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    env += [{"name": k, "value": v} for k, v in step.env.items()]
    for name, ref in step.secret_env.items():
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    for name, ref in step.optional_secret_env.items():
        optional = {"name": ref.name, "key": ref.key, "optional": True}
        env.append({"name": name, "valueFrom": {"secretKeyRef": optional}})
    if step.reports_progress:
        env += [
            {
                "name": contract_env.RUN_NAME,
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION_RUN}']"}},
            },
            {"name": contract_env.NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ]
    return env


def _resources(step: StepDefinition, spec: LoRAFinetuneSpec) -> dict[str, Any]:
    if not step.gpu:
        return json.loads(json.dumps(CPU_STEP_RESOURCES))
    res = spec.resources
    requests: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, str] = {"memory": res.memory}
    if res.gpus > 0:
        requests[res.gpu_resource_name] = str(res.gpus)
        limits[res.gpu_resource_name] = str(res.gpus)
    return {"requests": requests, "limits": limits}


def _tolerations(step: StepDefinition, spec: LoRAFinetuneSpec) -> list[dict[str, Any]]:
    if not step.gpu:
        return []
    tolerations: list[dict[str, Any]] = [dict(t) for t in spec.resources.tolerations]
    if spec.resources.gpus > 0:
        gpu: dict[str, Any] = {
            "key": spec.resources.gpu_resource_name,
            "operator": "Exists",
            "effect": "NoSchedule",
        }
        if gpu not in tolerations:
            tolerations.append(gpu)
    return tolerations


def build_job(
    step: StepDefinition,
    *,
    run: Mapping[str, Any],
    spec: LoRAFinetuneSpec,
    settings: JobSettings,
) -> dict[str, Any]:
    """The Job that runs one step of ``run`` (a LoRAFinetune object as a dict)."""
    run_name = run["metadata"]["name"]
    namespace = run["metadata"]["namespace"]
    labels = run_labels(run_name, step.name)
    job_labels = dict(labels)
    if spec.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = spec.queue_name
    annotations = {ANNOTATION_RUN: run_name}
    mount = spec.storage.mount_path
    volume_mounts = [
        {"name": "data", "mountPath": mount},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": spec.storage.claim_name}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if step.gpu:
        # DataLoader workers share tensors through /dev/shm; the runtime's 64 MiB is too small.
        volume_mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    container = {
        "name": step.name,
        "image": settings.image,
        "imagePullPolicy": spec.images.pull_policy,
        "command": list(step.command),
        "args": list(step.args),
        "env": _env(step),
        "resources": _resources(step, spec),
        "securityContext": dict(RESTRICTED_CONTAINER_SECURITY),
        "volumeMounts": volume_mounts,
        # The eval summary (and a failure's last log lines) come back through this.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # Only the train pod talks to the API server (progress into its own run's status), as the
        # run's own ServiceAccount, which may patch nothing else; the others mount no token at all.
        "serviceAccountName": (
            run_service_account(run_name) if step.reports_progress else NO_TOKEN_SERVICE_ACCOUNT
        ),
        "automountServiceAccountToken": step.reports_progress,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.fs_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if spec.images.pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in spec.images.pull_secrets]
    if step.gpu and spec.resources.node_selector:
        pod_spec["nodeSelector"] = dict(spec.resources.node_selector)
    tolerations = _tolerations(step, spec)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    job_spec: dict[str, Any] = {
        "backoffLimit": settings.backoff_limit,
        "activeDeadlineSeconds": settings.active_deadline_seconds,
        "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
        "completions": 1,
        "parallelism": 1,
        # A replacement pod starts only once the old one has terminated: a deleted train pod
        # writes its SIGTERM checkpoint first, so two trainers never share the run directory
        # (the default, TerminatingOrFailed, starts the new pod while the old one still runs).
        "podReplacementPolicy": "Failed",
        "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec},
    }
    if spec.queue_name:
        job_spec["suspend"] = True  # Kueue admits (unsuspends) it
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": single_node_job_name(run_name, step.name),
            "namespace": namespace,
            "labels": job_labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(run)],
        },
        "spec": job_spec,
    }
