"""The deploy stage: point the server's Deployment at the run's adapter and wait for the rollout.

One rollout per Deployment at a time, enforced by the ``zthumb.io/rollout-owner``
annotation on the Deployment, taken with a resourceVersion-conditional patch and
released when the rollout ends. A lock whose owner is gone or finished is stale and
may be taken over. Other runs wait in Deploying (reason WaitingForRollout). The
previous adapter env is saved in the status before the patch, and restored when the
rollout fails or times out, or when the evaluation fails ``spec.eval.gate`` (``revert``).

The rollout goes through the named states of ``rollout_states`` (the table is in
``operator/README.md``): each pass first checks what every state needs (the Deployment exists,
the lock is this run's), then runs the step of the run's state, one method per state in
``Rollouts.steps``; a step goes on to the next state in the same pass or ends the pass with an
outcome.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from zthumb_contract import crd
from zthumb_contract import env as contract_env
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.stages import TERMINAL_PHASES
from zthumb_contract.steps import RunPaths, deploy_env

from zthumb_operator import admission, conditions, deployments
from zthumb_operator.api import Api, ConflictError
from zthumb_operator.cache import Cache
from zthumb_operator.config import OperatorConfig
from zthumb_operator.rollout_states import (
    DEPLOY,
    EVAL,
    Lock,
    RollBack,
    RolloutState,
    lock,
    record_previous,
    rollout_state,
    watch_rollout,
)
from zthumb_operator.status import Done, Failed, Key, Outcome, Pass, Wait, again_in


def describe_env(env: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in env.items()) or f"no {contract_env.LORA_PATH}"


@dataclass
class Target:
    """One pass over one run's rollout: the Deployment as last read or patched, ``status.deploy``
    as this pass goes on changing it, and when the rollout started (or the wait for it)."""

    p: Pass
    spec: LoRAFinetuneSpec
    deployment: dict[str, Any]
    deploy: dict[str, Any]
    started: float

    @property
    def namespace(self) -> str:
        return str(self.p.run["metadata"]["namespace"])

    @property
    def run_name(self) -> str:
        return str(self.p.run["metadata"]["name"])

    def save(self) -> None:
        # A copy: the status must not share the dict this pass goes on changing, or a later
        # p.set of it would compare equal and never reach the patch.
        self.p.set("deploy", dict(self.deploy))


# A state's step: the next state, to go on with in the same pass, or the pass's outcome.
Step = Callable[[Target], Awaitable[RolloutState | Outcome]]


class Rollouts:
    def __init__(
        self, config: OperatorConfig, api: Api, cache: Cache, flush: Callable[[Pass], Awaitable[None]]
    ) -> None:
        self.config = config
        self.api = api
        self.cache = cache
        self.flush = flush  # writes the pass's status patch now
        # RELEASED and ROLLED_BACK have no step: the stage is done, or the run has failed.
        self.steps: dict[RolloutState, Step] = {
            RolloutState.WAITING: self.record_previous,
            RolloutState.RECORDED: self.patch_adapter,
            RolloutState.PATCHED: self.watch,
        }

    async def drive(self, p: Pass, spec: LoRAFinetuneSpec) -> Outcome:
        """Drive the deploy stage as far as it goes now."""
        state = rollout_state(p.status)
        target = await self.target(p, spec, state)
        if not isinstance(target, Target):
            return target
        for _ in RolloutState:  # bounded: every step moves forward or ends the pass
            step = self.steps.get(state)
            if step is None:
                raise RuntimeError(f"the deploy stage of run {target.run_name} is over ({state})")
            moved = await step(target)
            if not isinstance(moved, RolloutState):
                return moved
            state = moved
        raise RuntimeError(f"the rollout of run {target.run_name} did not settle in one pass")

    async def target(self, p: Pass, spec: LoRAFinetuneSpec, state: RolloutState) -> Target | Outcome:
        """What every state needs before its step: the Deployment exists (and, before anything was
        changed on it, the admission settings allow it), and its rollout lock is this run's."""
        d = spec.deploy
        ns, name = p.run["metadata"]["namespace"], p.run["metadata"]["name"]
        poll = self.config.rollout_poll_seconds
        deploy = dict(p.status.get("deploy") or {})
        if not deploy.get("waitingSince"):
            deploy["waitingSince"] = p.stamp
            p.set("deploy", dict(deploy))
        deployment = await self.api.get_deployment(ns, d.deployment)
        started = crd.parse_time(deploy.get("startedAt") or deploy["waitingSince"])
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
        if state is RolloutState.WAITING:
            # It did not exist when the run was admitted, or its labels changed since.
            refusal = admission.deployment_refusal(self.config, deployment)
            if refusal:
                return Failed(admission.REASON, refusal)
        owner = deployments.rollout_owner(deployment)
        match lock(deployment, name, lambda other: self.holds_lock((ns, other))):
            case Lock.BUSY:
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
            case Lock.TAKE:
                if owner:
                    p.event(
                        "Normal", "RolloutLockTakenOver", f"took over the stale rollout lock of run {owner}"
                    )
                patch = deployments.deployment_env_patch(
                    d.container,
                    {},
                    lock_owner=name,
                    resource_version=deployment["metadata"]["resourceVersion"],
                )
                try:
                    deployment = await self.api.patch_deployment(ns, d.deployment, patch)
                except ConflictError:
                    return again_in(0.2)  # someone changed the Deployment in between: look again
        return Target(p, spec, deployment, deploy, started)

    async def record_previous(self, t: Target) -> RolloutState | Outcome:
        """WAITING → RECORDED: the previous adapter env is safe in the status before anything changes."""
        recorded = record_previous(t.deployment, t.spec, t.deploy, t.p.stamp)
        if isinstance(recorded, Failed):
            await self.release(t.namespace, t.spec.deploy.deployment, t.run_name)
            return recorded
        t.deploy = recorded
        t.save()
        t.started = t.p.now
        await self.flush(t.p)  # written now, not at the end of the pass: the next step patches
        return RolloutState.RECORDED

    async def patch_adapter(self, t: Target) -> RolloutState | Outcome:
        """RECORDED → PATCHED: the run's adapter env on the Deployment; its generation is recorded,
        or the next pass would patch again and count a later change as this run's rollout."""
        d = t.spec.deploy
        new_env = deploy_env(RunPaths(self.config.server_data_root, t.run_name, t.spec))
        t.deployment = await self.api.patch_deployment(
            t.namespace, d.deployment, deployments.deployment_env_patch(d.container, new_env)
        )
        generation = int(t.deployment["metadata"].get("generation") or 0)
        t.deploy["patchedGeneration"] = generation
        t.save()
        t.p.set("adapterPath", new_env[contract_env.LORA_PATH])
        t.p.event(
            "Normal",
            "RolloutStarted",
            f"set {contract_env.LORA_PATH}={new_env[contract_env.LORA_PATH]} "
            f"{contract_env.LORA_SCALE}={new_env[contract_env.LORA_SCALE]} on "
            f"deployment {d.deployment} (generation {generation})",
        )
        return RolloutState.PATCHED

    async def watch(self, t: Target) -> RolloutState | Outcome:
        """PATCHED → RELEASED (rolled out: the lock is released), ROLLED_BACK (failed or timed out:
        the previous adapter is restored, the run fails), or PATCHED still (look again)."""
        d = t.spec.deploy
        timeout = d.rollout_timeout_seconds
        match watch_rollout(t.deployment, t.deploy, waited=t.p.now - t.started, timeout=timeout):
            case Done() as done:
                await self.release(t.namespace, d.deployment, t.run_name)
                return done
            case RollBack(why=why):
                await self.rollback(t.p, d.deployment, d.container, t.deploy)
                return Failed(
                    "RolloutFailed",
                    f"deployment {d.deployment} did not roll out: {why}; restored the previous adapter "
                    f"({describe_env(t.deploy.get('previousEnv') or {})}). Check the server pods "
                    f"(kubectl describe deployment {d.deployment}).",
                )
            case rolling:
                t.p.condition(DEPLOY.condition, "False", "RollingOut", rolling.message)
                t.p.phase(
                    DEPLOY.phase, "RollingOut", f"rolling out deployment {d.deployment}: {rolling.message}"
                )
                return again_in(self.config.rollout_poll_seconds)

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

    async def revert(self, p: Pass, spec: LoRAFinetuneSpec, reason: str, why: str) -> Wait | Failed:
        """The evaluation failed ``spec.eval.gate``, or could not judge the adapter (the eval Job
        failed): restore the previous adapter; the outcome (``Failed`` with ``reason``, its message
        ``why`` and what was restored) fails the run.

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
                f"{why}; waiting for run {owner} to finish its rollout of "
                f"deployment {d.deployment} before rolling back",
            )
            return again_in(self.config.rollout_poll_seconds)
        ours = deploy_env(RunPaths(self.config.server_data_root, name, spec))[contract_env.LORA_PATH]
        current = deployments.lora_env_values(deployment, d.container) if deployment else {}
        if deployment is None:
            rolled_back = f"deployment {d.deployment} no longer exists, nothing to roll back"
        elif current.get(contract_env.LORA_PATH) != ours:
            rolled_back = (
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
            rolled_back = (
                f"restored the previous adapter ({describe_env(state.get('previousEnv') or {})}) "
                f"on deployment {d.deployment}"
            )
        report = p.status.get("reportPath")
        return Failed(reason, f"{why}; {rolled_back}" + (f"; report {report}" if report else ""))

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
        state["rolledBack"] = True  # → ROLLED_BACK
        p.set("deploy", dict(state))
        p.event("Warning", "RolledBack", f"restored {describe_env(previous)} on deployment {deployment}")
