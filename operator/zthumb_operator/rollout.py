"""The deploy stage: point the server's Deployment at the run's adapter and wait for the rollout.

One rollout per Deployment at a time, enforced by the ``zthumb.io/rollout-owner``
annotation on the Deployment, taken with a resourceVersion-conditional patch and
released when the rollout ends. A lock whose owner is gone or finished is stale and
may be taken over. Other runs wait in Deploying (reason WaitingForRollout). The
previous adapter env is saved in the status before the patch, and restored when the
rollout fails or times out, or when the evaluation fails ``spec.eval.gate`` (``revert``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from zthumb_contract import crd
from zthumb_contract import env as contract_env
from zthumb_contract.gate import GATE_FAILED_REASON, GateVerdict
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.stages import STAGE, TERMINAL_PHASES
from zthumb_contract.steps import RunPaths, deploy_env

from zthumb_operator import admission, conditions, deployments, serverkey
from zthumb_operator.api import Api, ConflictError
from zthumb_operator.cache import Cache
from zthumb_operator.config import OperatorConfig
from zthumb_operator.status import Done, Failed, Key, Outcome, Pass, Wait, again_in

DEPLOY = STAGE["deploy"]
EVAL = STAGE["eval"]


def describe_env(env: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in env.items()) or f"no {contract_env.LORA_PATH}"


class Rollouts:
    def __init__(
        self, config: OperatorConfig, api: Api, cache: Cache, flush: Callable[[Pass], Awaitable[None]]
    ) -> None:
        self.config = config
        self.api = api
        self.cache = cache
        self.flush = flush  # writes the pass's status patch now

    async def drive(self, p: Pass, spec: LoRAFinetuneSpec) -> Outcome:
        """Drive the deploy stage as far as it goes now."""
        d = spec.deploy
        meta = p.run["metadata"]
        ns, name = meta["namespace"], meta["name"]
        poll = self.config.rollout_poll_seconds
        state = dict(p.status.get("deploy") or {})
        if not state.get("waitingSince"):
            state["waitingSince"] = p.stamp
            # A copy: the status must not share the dict this pass goes on changing, or a later
            # p.set of it would compare equal and never reach the patch.
            p.set("deploy", dict(state))
        deployment = await self.api.get_deployment(ns, d.deployment)
        started = crd.parse_time(state.get("startedAt") or state["waitingSince"])
        timeout = d.rollout_timeout_seconds
        if deployment is None:
            if p.now - started >= timeout:
                return Failed(
                    "DeploymentNotFound", f"deployment {d.deployment} not found in {ns} after {timeout}s"
                )
            p.phase(
                DEPLOY.phase, "DeploymentNotFound", f"waiting for deployment {d.deployment} to exist in {ns}"
            )
            return again_in(max(poll, 5.0))
        refusal = (
            admission.deployment_refusal(self.config, deployment) if not state.get("startedAt") else None
        )
        if refusal:  # it did not exist when the run was admitted, or its labels changed since
            return Failed(admission.REASON, refusal)
        owner = deployments.rollout_owner(deployment)
        if owner != name:
            if owner and self.holds_lock((ns, owner)):
                p.condition(
                    DEPLOY.condition,
                    "False",
                    "WaitingForRollout",
                    f"run {owner} is rolling out {d.deployment}",
                )
                p.phase(
                    DEPLOY.phase,
                    "WaitingForRollout",
                    f"waiting for run {owner} to finish its rollout of deployment {d.deployment} "
                    "(one rollout per Deployment at a time)",
                )
                return again_in(poll)
            if owner:
                p.event("Normal", "RolloutLockTakenOver", f"took over the stale rollout lock of run {owner}")
            try:
                deployment = await self.api.patch_deployment(
                    ns,
                    d.deployment,
                    deployments.deployment_env_patch(
                        d.container,
                        {},
                        lock_owner=name,
                        resource_version=deployment["metadata"]["resourceVersion"],
                    ),
                )
            except ConflictError:
                return again_in(0.2)  # someone changed the Deployment in between: look again
        if not state.get("previousRecorded"):
            env = deployments.container_env(deployment, d.container)
            if env is None:
                await self.release(ns, d.deployment, name)
                return Failed(
                    "ContainerNotFound", f"deployment {d.deployment} has no container {d.container!r}"
                )
            if EVAL.enabled(spec):
                # Refused before the rollout, not after it: an adapter that eval cannot call the
                # server about would stay deployed without its evaluation (and its gate).
                try:
                    serverkey.eval_key_ref(deployment, d.container, spec.deploy.service_url)
                except serverkey.ServerKeyError as error:
                    await self.release(ns, d.deployment, name)
                    return Failed(
                        error.reason,
                        f"{error.message}. The adapter was not rolled out: step eval could not call "
                        "the server with its key",
                    )
            state.update(
                deployment=d.deployment,
                container=d.container,
                previousEnv=deployments.lora_env_values(deployment, d.container),
                previousRecorded=True,
                startedAt=p.stamp,
            )
            p.set("deploy", dict(state))
            started = p.now
            await self.flush(p)  # the previous values are safe in the status before we change anything
        if not state.get("patchedGeneration"):
            new_env = deploy_env(RunPaths(self.config.server_data_root, name, spec))
            deployment = await self.api.patch_deployment(
                ns, d.deployment, deployments.deployment_env_patch(d.container, new_env)
            )
            state["patchedGeneration"] = int(deployment["metadata"].get("generation") or 0)
            p.set("deploy", dict(state))
            p.set("adapterPath", new_env[contract_env.LORA_PATH])
            p.event(
                "Normal",
                "RolloutStarted",
                f"set {contract_env.LORA_PATH}={new_env[contract_env.LORA_PATH]} "
                f"{contract_env.LORA_SCALE}={new_env[contract_env.LORA_SCALE]} on "
                f"deployment {d.deployment} (generation {state['patchedGeneration']})",
            )
        rollout = deployments.rollout_state(deployment, int(state["patchedGeneration"]))
        if rollout.done:
            await self.release(ns, d.deployment, name)
            message = f"deployment {d.deployment} rolled out: {rollout.message}"
            return Done(
                "RolloutComplete", message, "DeployCompleted", duration_seconds=max(0.0, p.now - started)
            )
        if rollout.failed or p.now - started >= timeout:
            why = (
                rollout.message if rollout.failed else f"not available within {timeout}s ({rollout.message})"
            )
            await self.rollback(p, d.deployment, d.container, state)
            return Failed(
                "RolloutFailed",
                f"deployment {d.deployment} did not roll out: {why}; restored the previous adapter "
                f"({describe_env(state.get('previousEnv') or {})}). Check the server pods "
                f"(kubectl describe deployment {d.deployment}).",
            )
        p.condition(DEPLOY.condition, "False", "RollingOut", rollout.message)
        p.phase(DEPLOY.phase, "RollingOut", f"rolling out deployment {d.deployment}: {rollout.message}")
        return again_in(poll)

    def holds_lock(self, key: Key) -> bool:
        """Does run ``key`` (the lock's owner) still need the lock?"""
        run = self.cache.runs.get(key)
        if run is None:
            return False
        status = run.get("status") or {}
        return status.get("phase") not in TERMINAL_PHASES and not conditions.condition_true(
            status.get("conditions"), DEPLOY.condition
        )

    async def release(self, ns: str, deployment: str, owner: str) -> None:
        current = await self.api.get_deployment(ns, deployment)
        if current is None or deployments.rollout_owner(current) != owner:
            return
        try:
            await self.api.patch_deployment(
                ns,
                deployment,
                deployments.deployment_env_patch(
                    "", {}, lock_owner=None, resource_version=current["metadata"]["resourceVersion"]
                ),
            )
        except ConflictError:
            await self.release(ns, deployment, owner)

    async def revert(self, p: Pass, spec: LoRAFinetuneSpec, verdict: GateVerdict) -> Wait | Failed:
        """The evaluation failed ``spec.eval.gate``: restore the previous adapter and fail the run.

        Only while the Deployment still serves this run's adapter: once another run has rolled out
        its own, that one stays. While another run holds the rollout lock, wait for it (it may be
        recording this run's adapter as the one to restore)."""
        d = spec.deploy
        ns, name = p.run["metadata"]["namespace"], p.run["metadata"]["name"]
        state = dict(p.status.get("deploy") or {})
        deployment = await self.api.get_deployment(ns, d.deployment)
        owner = deployments.rollout_owner(deployment) if deployment else None
        if owner and owner != name and self.holds_lock((ns, owner)):
            p.phase(
                EVAL.phase,
                "WaitingForRollout",
                f"eval gate {verdict.message}; waiting for run {owner} to finish its rollout of "
                f"deployment {d.deployment} before rolling back",
            )
            return again_in(self.config.rollout_poll_seconds)
        ours = deploy_env(RunPaths(self.config.server_data_root, name, spec))[contract_env.LORA_PATH]
        current = deployments.lora_env_values(deployment, d.container) if deployment else {}
        if deployment is None:
            outcome = f"deployment {d.deployment} no longer exists, nothing to roll back"
        elif current.get(contract_env.LORA_PATH) != ours:
            outcome = (
                f"deployment {d.deployment} already serves another adapter ({describe_env(current)}), "
                "left as is"
            )
        else:
            try:
                await self.rollback(
                    p, d.deployment, d.container, state, deployment["metadata"]["resourceVersion"]
                )
            except ConflictError:
                return again_in(0.2)  # the Deployment changed in between: look again
            outcome = (
                f"restored the previous adapter ({describe_env(state.get('previousEnv') or {})}) "
                f"on deployment {d.deployment}"
            )
        return Failed(
            GATE_FAILED_REASON, f"eval gate {verdict.message}; {outcome}; report {p.status.get('reportPath')}"
        )

    async def rollback(
        self,
        p: Pass,
        deployment: str,
        container: str,
        state: dict[str, Any],
        resource_version: str | None = None,
    ) -> None:
        previous: dict[str, str] = dict(state.get("previousEnv") or {})
        env: dict[str, str | None] = {k: previous.get(k) for k in contract_env.LORA_ENV}
        ns = p.run["metadata"]["namespace"]
        patch = deployments.deployment_env_patch(
            container, env, lock_owner=None, resource_version=resource_version
        )
        await self.api.patch_deployment(ns, deployment, patch)
        state["rolledBack"] = True
        p.set("deploy", dict(state))
        p.event("Warning", "RolledBack", f"restored {describe_env(previous)} on deployment {deployment}")
