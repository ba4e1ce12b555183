"""The run state machine: one LoRAFinetune through fetch-model → prepare-dataset → train →
deploy → eval, advanced on Job, pod and LoRAFinetune events.

Design:
- Watch events (kopf ``on.event`` handlers) keep an in-memory cache of runs, the
  operator's Jobs and their pods, and ask for a reconcile of the owning run. A
  per-run worker coalesces requests: a run is never reconciled twice at once.
- The status is the memory: a step whose condition is True is never run again
  (even after its Job was garbage-collected by its TTL). Jobs have deterministic
  names; creating one that exists (409) adopts it, so a restarted operator never
  creates a duplicate.
- All status changes of one reconcile go out as one merge patch of
  ``/status`` (``progress`` belongs to the train pod and is only touched at the
  start and end of training), plus one Event per transition.
- Deploy: one rollout per Deployment at a time, enforced by the
  ``zthumb.io/rollout-owner`` annotation on the Deployment, taken with a
  resourceVersion-conditional patch and released when the rollout ends. A lock
  whose owner is gone or finished is stale and may be taken over. Other runs
  wait in Deploying (reason WaitingForRollout).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import kopf
from pydantic import ValidationError
from zthumb_contract import crd
from zthumb_contract import env as contract_env
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.stages import (
    FAILED,
    PENDING,
    STAGE,
    SUCCEEDED,
    TERMINAL_PHASES,
    Runner,
    Stage,
    Success,
    active_stages,
    build_steps,
)
from zthumb_contract.steps import RunPaths, StepDefinition, deploy_env

from zthumb_operator import builders as b
from zthumb_operator import metrics
from zthumb_operator.api import ConflictError
from zthumb_operator.config import OperatorConfig

log = logging.getLogger("zthumb_operator")

Key = tuple[str, str]  # (namespace, name)


class Api(Protocol):
    async def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...
    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def delete_job(self, namespace: str, name: str) -> None: ...
    async def list_job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]: ...
    async def patch_run_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]: ...
    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def patch_deployment(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...
    async def post_event(
        self, run: dict[str, Any], type_: str, reason: str, message: str, now: str
    ) -> None: ...


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _camel(step: str) -> str:
    return "".join(part.capitalize() for part in step.split("-"))


@dataclass
class Pass:
    """One reconcile of one run: the working status, the patch to write, the events to post."""

    run: dict[str, Any]
    now: float
    status: dict[str, Any] = field(default_factory=dict)
    patch: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.status = dict(self.run.get("status") or {})

    @property
    def stamp(self) -> str:
        return crd.format_time(self.now)

    @property
    def generation(self) -> int | None:
        return self.run["metadata"].get("generation")

    def set(self, key: str, value: Any) -> None:
        if self.status.get(key) != value:
            self.status[key] = value
            self.patch[key] = value

    def condition(self, ctype: str, status: str, reason: str, message: str) -> None:
        current = b.get_condition(self.status.get("conditions"), ctype)
        if current and (current.get("status"), current.get("reason"), current.get("message")) == (
            status,
            reason,
            message,
        ):
            return
        conds = b.set_condition(
            self.status.get("conditions") or [],
            ctype,
            status,
            reason,
            message,
            generation=self.generation,
            now=self.stamp,
        )
        self.set("conditions", conds)

    def phase(self, phase: str, reason: str, message: str, *, event: str | None = "Normal") -> None:
        old = (self.status.get("phase"), self.status.get("reason"))
        if old == (phase, reason) and self.status.get("message") == message:
            return
        fields = b.transition(
            self.status,
            phase=phase,
            reason=reason,
            message=message,
            generation=self.generation,
            now=self.stamp,
        )
        for key, value in fields.items():
            self.set(key, value)
        if old != (phase, reason):
            metrics.TRANSITIONS.labels(phase=phase).inc()
            # "<step> is running" is already told by the JobCreated event of that step.
            if event and reason != "Running":
                self.events.append((event, reason, f"{phase}: {message}"))

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


class Controller:
    """Caches, the per-run work queue, and the state machine."""

    def __init__(self, config: OperatorConfig, api: Api, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.api = api
        self.clock = clock
        self.runs: dict[Key, dict[str, Any]] = {}
        self.jobs: dict[Key, dict[str, Any]] = {}
        self.pods: dict[Key, dict[str, dict[str, Any]]] = {}  # (ns, job name) -> pod name -> pod
        self._dirty: set[Key] = set()
        self._workers: dict[Key, asyncio.Task[None]] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._failures: dict[Key, int] = {}

    # ------------------------------------------------------------------ events → cache

    def on_run_event(self, event_type: str | None, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if event_type == "DELETED":
            self.runs.pop(key, None)
            self._failures.pop(key, None)
            return
        cached = self.runs.get(key)
        same = cached is not None and cached["metadata"].get("uid") == obj["metadata"].get("uid")
        if same and cached is not None and _rv(obj) < _rv(cached):
            return  # an older event than what our own write returned
        self.runs[key] = obj
        if (obj.get("status") or {}).get("phase") not in TERMINAL_PHASES:
            self.request(key)

    def _owner_run(self, obj: Mapping[str, Any]) -> Key | None:
        meta = obj.get("metadata") or {}
        for ref in meta.get("ownerReferences") or []:
            if ref.get("kind") == crd.KIND and ref.get("apiVersion", "").startswith(crd.GROUP + "/"):
                return (meta["namespace"], ref["name"])
        return None

    def on_job_event(self, event_type: str | None, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            self.jobs.pop(key, None)
            self.pods.pop(key, None)
        elif _rv(obj) >= _rv(self.jobs.get(key) or {}):
            self.jobs[key] = obj
        owner = self._owner_run(obj)
        if owner:
            self.request(owner)

    def on_pod_event(self, event_type: str | None, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        labels = meta.get("labels") or {}
        job = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
        if not job:
            return
        jkey = (meta["namespace"], job)
        pods = self.pods.setdefault(jkey, {})
        if event_type == "DELETED":
            pods.pop(meta["name"], None)
        else:
            pods[meta["name"]] = obj
        job_obj = self.jobs.get(jkey)
        owner = self._owner_run(job_obj) if job_obj else None
        if owner:
            self.request(owner)

    # ------------------------------------------------------------------ work queue

    def request(self, key: Key, delay: float = 0.0) -> None:
        """Reconcile ``key`` now (coalesced) or after ``delay`` seconds (earliest wins)."""
        loop = asyncio.get_running_loop()
        if delay > 0:
            due = loop.time() + delay
            timer = self._timers.get(key)
            if timer is not None and timer.when() <= due:
                return
            if timer is not None:
                timer.cancel()
            self._timers[key] = loop.call_at(due, self._fire, key)
            return
        self._dirty.add(key)
        if key not in self._workers:
            self._workers[key] = loop.create_task(self._work(key))

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.request(key)

    async def _work(self, key: Key) -> None:
        try:
            while key in self._dirty:
                self._dirty.discard(key)
                delay = await self.reconcile_safely(key)
                if delay is not None:
                    self.request(key, delay)
        finally:
            self._workers.pop(key, None)

    def resync(self) -> None:
        """Safety net: reconcile every run that is not finished."""
        metrics.set_run_phases((r.get("status") or {}).get("phase") for r in self.runs.values())
        for key, run in list(self.runs.items()):
            if (run.get("status") or {}).get("phase") not in TERMINAL_PHASES:
                self.request(key)

    async def idle(self) -> None:
        """Wait until no reconcile is running (tests)."""
        while self._workers:
            await asyncio.gather(*list(self._workers.values()), return_exceptions=True)

    def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in self._workers.values():
            task.cancel()

    async def reconcile_safely(self, key: Key) -> float | None:
        metrics.RECONCILES.inc()
        started = time.monotonic()
        try:
            delay = await self.reconcile(key)
            self._failures.pop(key, None)
            return delay
        except kopf.TemporaryError as exc:
            metrics.RECONCILE_ERRORS.labels(kind="temporary").inc()
            log.info("run %s/%s: %s (retry in %ss)", *key, exc, exc.delay)
            return float(exc.delay or 5)
        except Exception:
            metrics.RECONCILE_ERRORS.labels(kind="unexpected").inc()
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            delay = min(60.0, 0.5 * 2**failures)
            log.exception("run %s/%s: reconcile failed (attempt %d, retry in %.1fs)", *key, failures, delay)
            return delay
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)

    # ------------------------------------------------------------------ state machine

    async def reconcile(self, key: Key) -> float | None:
        """Advance one run as far as it can go now; return seconds until it wants another look."""
        run = self.runs.get(key)
        if run is None or run["metadata"].get("deletionTimestamp"):
            return None
        if (run.get("status") or {}).get("phase") in TERMINAL_PHASES:
            return None
        p = Pass(run=run, now=self.clock())
        try:
            return await self._advance(p)
        except kopf.PermanentError as exc:
            p.phase(FAILED, "InvalidSpec", str(exc), event="Warning")
            return None
        finally:
            await self._flush(p)

    async def _flush(self, p: Pass) -> None:
        ns, name = p.run["metadata"]["namespace"], p.run["metadata"]["name"]
        if p.patch:
            updated = await self.api.patch_run_status(ns, name, p.patch)
            p.patch = {}
            if _rv(updated) >= _rv(self.runs.get((ns, name)) or {}):
                self.runs[(ns, name)] = updated
            p.run = updated
        events, p.events = p.events, []
        for type_, reason, message in events:
            try:
                await self.api.post_event(p.run, type_, reason, message, p.stamp)
            except Exception as exc:  # an Event is never worth failing a reconcile for
                log.warning("could not post event %s for %s/%s: %s", reason, ns, name, exc)

    def _parse(self, run: Mapping[str, Any]) -> LoRAFinetuneSpec:
        try:
            return LoRAFinetuneSpec.from_manifest(dict(run))
        except ValidationError as exc:
            errors = "; ".join(
                f"spec.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
            )
            raise kopf.PermanentError(f"invalid spec: {errors}") from None

    def server_url(self, run: Mapping[str, Any], spec: LoRAFinetuneSpec) -> str:
        if spec.deploy.service_url:
            return spec.deploy.service_url
        return self.config.eval_server_url_template.format(
            deployment=spec.deploy.deployment, namespace=run["metadata"]["namespace"]
        )

    def job_settings(self, run: Mapping[str, Any]) -> b.JobSettings:
        raw_images = ((run.get("spec") or {}).get("images")) or {}
        return b.JobSettings(
            image=raw_images.get("trainer") or self.config.trainer_image,
            service_account=self.config.trainer_service_account,
            run_as_user=self.config.run_as_user,
            fs_group=self.config.fs_group,
            backoff_limit=self.config.backoff_limit,
            active_deadline_seconds=self.config.active_deadline_seconds,
            ttl_seconds_after_finished=self.config.job_ttl_seconds,
        )

    async def _advance(self, p: Pass) -> float | None:
        spec = self._parse(p.run)
        name = p.run["metadata"]["name"]
        steps = {
            s.name: s for s in build_steps(name, spec, spec.storage.mount_path, self.server_url(p.run, spec))
        }
        stages = active_stages(spec)
        if not p.status.get("phase"):
            p.event("Normal", "Accepted", f"run {name}: steps {', '.join(s.name for s in stages)}")
        for stage in stages:
            if b.condition_true(p.status.get("conditions"), stage.condition):
                continue
            if stage.runner is Runner.DEPLOY:
                delay = await self._deploy(p, spec)
            else:
                delay = await self._job_step(p, spec, stage, steps[stage.name])
            if delay is not False:
                return delay if isinstance(delay, float | int) else None
            if p.status.get("phase") == FAILED:
                return None
        self._succeed(p, spec)
        return None

    def _succeed(self, p: Pass, spec: LoRAFinetuneSpec) -> None:
        parts = []
        if spec.deploy.enabled:
            parts.append(
                f"adapter {p.status.get('adapterPath')} is served by deployment {spec.deploy.deployment}"
            )
        else:
            parts.append("adapter exported (deploy disabled)")
        if p.status.get("reportPath"):
            parts.append(f"report {p.status['reportPath']}")
        p.phase(SUCCEEDED, "Succeeded", "; ".join(parts))

    def _fail(self, p: Pass, stage: str, reason: str, message: str) -> None:
        p.condition(STAGE[stage].condition, "False", reason, message)
        p.phase(FAILED, reason, message, event="Warning")

    # ------------------------------------------------------------------ Job steps

    async def _ensure_job(self, p: Pass, spec: LoRAFinetuneSpec, step: StepDefinition) -> dict[str, Any]:
        meta = p.run["metadata"]
        ns = meta["namespace"]
        jname = b.job_name(meta["name"], step.name)
        job = self.jobs.get((ns, jname))
        created = False
        if job is None:
            body = b.build_job(step, run=p.run, spec=spec, settings=self.job_settings(p.run))
            try:
                job = await self.api.create_job(ns, body)
                created = True
            except ConflictError:
                job = await self.api.get_job(ns, jname)  # adopt: never a second Job for a step
                if job is None:
                    raise kopf.TemporaryError(f"Job {jname} vanished while being adopted", delay=1) from None
            if _rv(job) >= _rv(self.jobs.get((ns, jname)) or {}):
                self.jobs[(ns, jname)] = job
        owner_uids = {r.get("uid") for r in job["metadata"].get("ownerReferences") or []}
        if meta["uid"] not in owner_uids:
            raise kopf.TemporaryError(
                f"Job {jname} belongs to an earlier LoRAFinetune of the same name and is still being "
                "deleted; waiting for the garbage collector",
                delay=5,
            )
        jobs = dict(p.status.get("jobs") or {})
        if jobs.get(step.name) != jname:
            jobs[step.name] = jname
            p.set("jobs", jobs)
        if created:
            suffix = f" (suspended for Kueue queue {spec.queue_name})" if spec.queue_name else ""
            p.event("Normal", "JobCreated", f"created Job {jname} for step {step.name}{suffix}")
            if step.reports_progress:
                total = spec.training.max_train_steps
                p.set("progress", {"step": 0, "totalSteps": total, "percent": 0})
        return job

    async def _job_step(
        self, p: Pass, spec: LoRAFinetuneSpec, stage: Stage, step: StepDefinition
    ) -> float | bool | None:
        """Drive one Job step. False: the step is done (go on); otherwise the requeue delay."""
        job = await self._ensure_job(p, spec, step)
        ns = p.run["metadata"]["namespace"]
        jname = job["metadata"]["name"]
        pods = list(self.pods.get((ns, jname), {}).values())
        state = b.job_state(job, pods)
        cond = stage.condition
        if state.state == "succeeded":
            await self._step_succeeded(p, spec, stage, job, pods)
            return False
        if state.state == "failed":
            reason = f"{_camel(step.name)}Failed"
            self._fail(
                p,
                step.name,
                reason,
                f"step {step.name}: Job {jname} failed ({state.reason}): {state.message}",
            )
            return None
        if state.state == "suspended":
            p.condition(cond, "False", "Queued", f"Job {jname} is suspended")
            p.phase(
                PENDING,
                "Queued",
                f"step {step.name}: Job {jname} waits for Kueue queue {spec.queue_name} to admit it",
            )
            return None
        if state.state == "unschedulable":
            since = crd.parse_time(state.since) if state.since else p.now
            deadline = self.config.unschedulable_deadline_seconds
            waited = p.now - since
            scheduler = f"{state.reason}: {state.message}"
            if waited >= deadline:
                await self.api.delete_job(ns, jname)
                p.condition(b.SCHEDULED, "False", "Unschedulable", scheduler)
                self._fail(
                    p,
                    step.name,
                    "Unschedulable",
                    f"step {step.name}: no node could run Job {jname} for {int(waited)}s "
                    f"(deadline {deadline}s); the scheduler said: {scheduler}. Lower resources.gpus, "
                    "fix resources.nodeSelector/tolerations, or add capacity.",
                )
                return None
            p.condition(b.SCHEDULED, "False", "Unschedulable", scheduler)
            p.condition(cond, "False", "Unschedulable", f"Job {jname} cannot be scheduled")
            p.phase(
                PENDING,
                "Unschedulable",
                f"step {step.name}: Job {jname} cannot be scheduled yet ({scheduler}); "
                f"failing after {deadline}s",
            )
            return max(1.0, deadline - waited)
        # running
        if step.reports_progress:
            self._progress_percent(p)
        if b.get_condition(p.status.get("conditions"), b.SCHEDULED):
            p.condition(b.SCHEDULED, "True", "Scheduled", f"Job {jname} has been scheduled")
        p.condition(cond, "False", "Running", f"Job {jname} is running")
        p.phase(stage.phase, "Running", f"step {step.name}: Job {jname} is running")
        return None

    @staticmethod
    def _progress_percent(p: Pass) -> None:
        """Fill progress.percent (the PROGRESS column) from the step/totalSteps the train pod reports."""
        progress = p.status.get("progress") or {}
        step, total = progress.get("step"), progress.get("totalSteps")
        if not isinstance(step, int) or not isinstance(total, int) or total <= 0:
            return
        percent = max(0, min(100, step * 100 // total))
        if progress.get("percent") != percent:
            p.status["progress"] = {**progress, "percent": percent}
            p.patch["progress"] = {
                **(p.patch.get("progress") or {}),
                "percent": percent,
            }  # merge: only percent

    async def _step_succeeded(
        self,
        p: Pass,
        spec: LoRAFinetuneSpec,
        stage: Stage,
        job: Mapping[str, Any],
        pods: list[dict[str, Any]],
    ) -> None:
        name = p.run["metadata"]["name"]
        ns = p.run["metadata"]["namespace"]
        duration = b.step_duration_seconds(job)
        if duration is not None:
            metrics.STEP_DURATION.labels(step=stage.name).observe(duration)
        paths = RunPaths(data_root=spec.storage.mount_path, run_name=name, spec=spec)
        message = f"Job {job['metadata']['name']} completed"
        if stage.success is Success.ADAPTER:
            total = spec.training.max_train_steps
            progress = dict(p.status.get("progress") or {})
            progress.update({"step": total, "totalSteps": total, "percent": 100})
            p.set("progress", progress)
            p.set(
                "adapterPath", deploy_env(RunPaths(self.config.server_data_root, name, spec))["Z_LORA_PATH"]
            )
            message += f"; adapter exported to {paths.adapter_dir}"
        if stage.success is Success.REPORT:
            summary = b.eval_summary(pods)
            if summary is None and not b.terminated_messages(pods):
                fresh = await self.api.list_job_pods(ns, job["metadata"]["name"])
                summary = b.eval_summary(fresh)
                if (
                    summary is None
                    and not b.terminated_messages(fresh)
                    and self.config.simulated_eval_summary
                ):
                    summary = dict(self.config.simulated_eval_summary)  # test hook: simulated pods
            if summary is not None:
                p.set("evalSummary", summary)
            p.set("reportPath", paths.report)
            message += f"; report {paths.report}"
        p.condition(stage.condition, "True", "Completed", message)
        p.event("Normal", f"{_camel(stage.name)}Completed", message)

    # ------------------------------------------------------------------ deploy

    async def _deploy(self, p: Pass, spec: LoRAFinetuneSpec) -> float | bool | None:
        d = spec.deploy
        meta = p.run["metadata"]
        ns, name = meta["namespace"], meta["name"]
        poll = self.config.rollout_poll_seconds
        state = dict(p.status.get("deploy") or {})
        if not state.get("waitingSince"):
            state["waitingSince"] = p.stamp
            p.set("deploy", state)
        deployment = await self.api.get_deployment(ns, d.deployment)
        started = crd.parse_time(state.get("startedAt") or state["waitingSince"])
        timeout = d.rollout_timeout_seconds
        if deployment is None:
            if p.now - started >= timeout:
                self._fail(
                    p,
                    "deploy",
                    "DeploymentNotFound",
                    f"deployment {d.deployment} not found in {ns} after {timeout}s",
                )
                return None
            p.phase(
                "Deploying", "DeploymentNotFound", f"waiting for deployment {d.deployment} to exist in {ns}"
            )
            return max(poll, 5.0)
        owner = b.rollout_owner(deployment)
        if owner != name:
            if owner and self._holds_lock((ns, owner)):
                p.condition(
                    "Deployed", "False", "WaitingForRollout", f"run {owner} is rolling out {d.deployment}"
                )
                p.phase(
                    "Deploying",
                    "WaitingForRollout",
                    f"waiting for run {owner} to finish its rollout of deployment {d.deployment} "
                    "(one rollout per Deployment at a time)",
                )
                return poll
            if owner:
                p.event("Normal", "RolloutLockTakenOver", f"took over the stale rollout lock of run {owner}")
            try:
                deployment = await self.api.patch_deployment(
                    ns,
                    d.deployment,
                    b.deployment_env_patch(
                        d.container,
                        {},
                        lock_owner=name,
                        resource_version=deployment["metadata"]["resourceVersion"],
                    ),
                )
            except ConflictError:
                return 0.2  # someone changed the Deployment in between: look again
        if not state.get("previousRecorded"):
            env = b.container_env(deployment, d.container)
            if env is None:
                await self._release(ns, d.deployment, name)
                self._fail(
                    p,
                    "deploy",
                    "ContainerNotFound",
                    f"deployment {d.deployment} has no container {d.container!r}",
                )
                return None
            state.update(
                deployment=d.deployment,
                container=d.container,
                previousEnv=b.lora_env_values(deployment, d.container),
                previousRecorded=True,
                startedAt=p.stamp,
            )
            p.set("deploy", dict(state))
            started = p.now
            await self._flush(p)  # the previous values are safe in the status before we change anything
        if not state.get("patchedGeneration"):
            new_env = deploy_env(RunPaths(self.config.server_data_root, name, spec))
            deployment = await self.api.patch_deployment(
                ns, d.deployment, b.deployment_env_patch(d.container, new_env)
            )
            state["patchedGeneration"] = int(deployment["metadata"].get("generation") or 0)
            p.set("deploy", dict(state))
            p.set("adapterPath", new_env["Z_LORA_PATH"])
            p.event(
                "Normal",
                "RolloutStarted",
                f"set Z_LORA_PATH={new_env['Z_LORA_PATH']} Z_LORA_SCALE={new_env['Z_LORA_SCALE']} on "
                f"deployment {d.deployment} (generation {state['patchedGeneration']})",
            )
        rollout = b.rollout_state(deployment, int(state["patchedGeneration"]))
        if rollout.done:
            await self._release(ns, d.deployment, name)
            metrics.STEP_DURATION.labels(step="deploy").observe(max(0.0, p.now - started))
            message = f"deployment {d.deployment} rolled out: {rollout.message}"
            p.condition("Deployed", "True", "RolloutComplete", message)
            p.event("Normal", "DeployCompleted", message)
            return False
        if rollout.failed or p.now - started >= timeout:
            why = (
                rollout.message if rollout.failed else f"not available within {timeout}s ({rollout.message})"
            )
            await self._rollback(p, d.deployment, d.container, state)
            self._fail(
                p,
                "deploy",
                "RolloutFailed",
                f"deployment {d.deployment} did not roll out: {why}; restored the previous adapter "
                f"({self._describe_env(state.get('previousEnv') or {})}). Check the server pods "
                f"(kubectl describe deployment {d.deployment}).",
            )
            return None
        p.condition("Deployed", "False", "RollingOut", rollout.message)
        p.phase("Deploying", "RollingOut", f"rolling out deployment {d.deployment}: {rollout.message}")
        return poll

    @staticmethod
    def _describe_env(env: Mapping[str, str]) -> str:
        return ", ".join(f"{k}={v}" for k, v in env.items()) or "no Z_LORA_PATH"

    def _holds_lock(self, key: Key) -> bool:
        """Does run ``key`` (the lock's owner) still need the lock?"""
        run = self.runs.get(key)
        if run is None:
            return False
        status = run.get("status") or {}
        return status.get("phase") not in TERMINAL_PHASES and not b.condition_true(
            status.get("conditions"), "Deployed"
        )

    async def _release(self, ns: str, deployment: str, owner: str) -> None:
        current = await self.api.get_deployment(ns, deployment)
        if current is None or b.rollout_owner(current) != owner:
            return
        try:
            await self.api.patch_deployment(
                ns,
                deployment,
                b.deployment_env_patch(
                    "", {}, lock_owner=None, resource_version=current["metadata"]["resourceVersion"]
                ),
            )
        except ConflictError:
            await self._release(ns, deployment, owner)

    async def _rollback(self, p: Pass, deployment: str, container: str, state: dict[str, Any]) -> None:
        previous: dict[str, str] = dict(state.get("previousEnv") or {})
        env: dict[str, str | None] = {k: previous.get(k) for k in contract_env.LORA_ENV}
        ns = p.run["metadata"]["namespace"]
        patch = b.deployment_env_patch(container, env, lock_owner=None)
        await self.api.patch_deployment(ns, deployment, patch)
        state["rolledBack"] = True
        p.set("deploy", dict(state))
        p.event(
            "Warning", "RolledBack", f"restored {self._describe_env(previous)} on deployment {deployment}"
        )
