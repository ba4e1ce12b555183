"""The server Deployment as the deploy stage sees it: its LoRA env, the env patch (with the
rollout lock annotation) and ``kubectl rollout status``'s verdict. Pure: plain values in, dicts out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zthumb_contract import env as contract_env

# Held on the Deployment while a run rolls it out, so two runs never patch it at once.
ROLLOUT_OWNER_ANNOTATION = "zthumb.io/rollout-owner"


def container_env(deployment: Mapping[str, Any], container: str) -> dict[str, str] | None:
    """Plain ``value`` env of ``container`` in the Deployment's pod template (None: no such container)."""
    for c in deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []:
        if c.get("name") == container:
            return {e["name"]: e.get("value", "") for e in c.get("env") or [] if "valueFrom" not in e}
    return None


def lora_env_values(deployment: Mapping[str, Any], container: str) -> dict[str, str]:
    """Current Z_LORA_PATH / Z_LORA_SCALE of the container (absent ones left out)."""
    env = container_env(deployment, container) or {}
    return {k: env[k] for k in contract_env.LORA_ENV if k in env}


def deployment_env_patch(
    container: str,
    env: Mapping[str, str | None],
    *,
    lock_owner: str | bool | None = False,
    resource_version: str | None = None,
) -> dict[str, Any]:
    """Strategic-merge patch setting (value) or removing (None) env vars of one container.

    ``lock_owner``: a run name sets the rollout lock annotation, None removes it,
    False leaves it alone. ``resource_version`` makes the patch conditional (409 on change).
    """
    entries: list[dict[str, Any]] = []
    for name, value in env.items():
        if value is None:
            entries.append({"name": name, "$patch": "delete"})
        else:
            entries.append({"name": name, "value": value})
    patch: dict[str, Any] = {}
    if env:
        patch["spec"] = {"template": {"spec": {"containers": [{"name": container, "env": entries}]}}}
    meta: dict[str, Any] = {}
    if lock_owner is not False:
        meta["annotations"] = {ROLLOUT_OWNER_ANNOTATION: lock_owner}
    if resource_version:
        meta["resourceVersion"] = resource_version
    if meta:
        patch["metadata"] = meta
    return patch


def rollout_owner(deployment: Mapping[str, Any]) -> str | None:
    return ((deployment.get("metadata") or {}).get("annotations") or {}).get(ROLLOUT_OWNER_ANNOTATION)


@dataclass(frozen=True)
class RolloutProgress:
    done: bool
    failed: bool = False
    message: str = ""


def rollout_progress(deployment: Mapping[str, Any], patched_generation: int) -> RolloutProgress:
    """Like ``kubectl rollout status``: has the Deployment rolled out ``patched_generation``?"""
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    want = int(spec.get("replicas", 1))
    observed = int(status.get("observedGeneration") or 0)
    if observed < patched_generation:
        return RolloutProgress(False, message="waiting for the Deployment controller to observe the change")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return RolloutProgress(False, True, cond.get("message") or "progress deadline exceeded")
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < want:
        return RolloutProgress(False, message=f"{updated} of {want} new replicas updated")
    if total > updated:
        return RolloutProgress(False, message=f"{total - updated} old replicas pending termination")
    if available < updated:
        return RolloutProgress(False, message=f"{available} of {updated} updated replicas available")
    return RolloutProgress(True, message=f"{available} of {want} replicas available with the new adapter")
