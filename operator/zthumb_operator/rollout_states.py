"""The deploy stage's rollout as named states, and what each state comes to given the Deployment
as it is now. Pure: plain values in, outcomes out; ``rollout.py`` does the I/O of each step.

The state is not stored in a field of its own: it is derived from the flags ``status.deploy`` has
always kept (``previousRecorded``, ``patchedGeneration``, ``rolledBack``) and the ``Deployed``
condition. A run that an earlier operator started mid-rollout therefore reads the same, and
there is no second field that could disagree with the flags. The table of states and transitions
is in ``operator/README.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.stages import STAGE

from zthumb_operator import conditions, deployments, serverkey
from zthumb_operator.status import Done, Failed

DEPLOY = STAGE["deploy"]
EVAL = STAGE["eval"]


class RolloutState(StrEnum):
    """Where a run's rollout of its adapter stands."""

    WAITING = "Waiting"  # for the Deployment and its rollout lock; nothing changed on it yet
    RECORDED = "PreviousRecorded"  # lock held, the previous adapter env saved; not patched yet
    PATCHED = "Patched"  # the adapter env patched (patchedGeneration); waiting for the rollout
    RELEASED = "Released"  # rolled out and the lock released: the Deployed condition is True
    ROLLED_BACK = "RolledBack"  # the previous env restored: the rollout or the eval gate failed


def rollout_state(status: Mapping[str, Any]) -> RolloutState:
    """The state of the run whose status is ``status`` (see the module docstring for why derived)."""
    deploy = status.get("deploy") or {}
    if deploy.get("rolledBack"):
        return RolloutState.ROLLED_BACK
    if conditions.condition_true(status.get("conditions"), DEPLOY.condition):
        return RolloutState.RELEASED
    if deploy.get("patchedGeneration"):
        return RolloutState.PATCHED
    if deploy.get("previousRecorded"):
        return RolloutState.RECORDED
    return RolloutState.WAITING


class Lock(StrEnum):
    """What the run does about the Deployment's rollout lock on this pass."""

    OURS = "ours"  # held by this run: go on
    BUSY = "busy"  # held by another run that still needs it: wait
    TAKE = "take"  # free, or held by a run that is gone or finished: take it (a conditional patch)


def lock(deployment: Mapping[str, Any], run_name: str, holds_lock: Callable[[str], bool]) -> Lock:
    """``holds_lock(owner)``: does the run named ``owner`` still need the lock?"""
    owner = deployments.rollout_owner(deployment)
    if owner == run_name:
        return Lock.OURS
    if owner and holds_lock(owner):
        return Lock.BUSY
    return Lock.TAKE


def record_previous(
    deployment: Mapping[str, Any], spec: LoRAFinetuneSpec, deploy: Mapping[str, Any], stamp: str
) -> dict[str, Any] | Failed:
    """WAITING → RECORDED: ``status.deploy`` with the adapter env the Deployment serves now (to
    restore on failure), or why the adapter may not be rolled out onto it."""
    d = spec.deploy
    if deployments.container_env(deployment, d.container) is None:
        return Failed("ContainerNotFound", f"deployment {d.deployment} has no container {d.container!r}")
    if EVAL.enabled(spec):
        # Refused before the rollout, not after it: an adapter that eval cannot call the server
        # about would stay deployed without its evaluation (and its gate).
        try:
            serverkey.eval_key_ref(deployment, d.container, d.service_url)
        except serverkey.ServerKeyError as error:
            return Failed(
                error.reason,
                f"{error.message}. The adapter was not rolled out: step eval could not call "
                "the server with its key",
            )
    return {
        **deploy,
        "deployment": d.deployment,
        "container": d.container,
        "previousEnv": deployments.lora_env_values(deployment, d.container),
        "previousRecorded": True,
        "startedAt": stamp,
    }


@dataclass(frozen=True)
class RollingOut:
    """PATCHED, still: the Deployment is rolling out (``message`` says how far)."""

    message: str


@dataclass(frozen=True)
class RollBack:
    """PATCHED → ROLLED_BACK: the rollout failed (``why``); restore the previous adapter and fail."""

    why: str


def watch_rollout(
    deployment: Mapping[str, Any], deploy: Mapping[str, Any], *, waited: float, timeout: int
) -> Done | RollBack | RollingOut:
    """PATCHED: has the Deployment rolled out the generation this run patched, within ``timeout``
    seconds of the rollout's start (``waited`` seconds ago)? ``Done`` → RELEASED."""
    name = deploy.get("deployment") or (deployment.get("metadata") or {}).get("name", "")
    progress = deployments.rollout_progress(deployment, int(deploy["patchedGeneration"]))
    if progress.done:
        message = f"deployment {name} rolled out: {progress.message}"
        return Done("RolloutComplete", message, "DeployCompleted", duration_seconds=max(0.0, waited))
    if progress.failed:
        return RollBack(progress.message)
    if waited >= timeout:
        return RollBack(f"not available within {timeout}s ({progress.message})")
    return RollingOut(progress.message)
