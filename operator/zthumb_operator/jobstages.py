"""The Job stages: create (or adopt) a stage's Job, read its state into the run's status.

A Job has a deterministic name; creating one that exists (409) adopts it, so a
restarted operator never creates a duplicate. What a stage's success adds to the
status comes from its entry in the stage table (``Success``). A stage's end is an outcome
(``Done``, ``Failed``), which the controller writes into the status; it judges the eval's
numbers by ``spec.eval.gate`` itself (``reconcile``), so a Job stage knows nothing of rollouts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import kopf
from zthumb_contract import crd
from zthumb_contract import env as contract_env
from zthumb_contract.results import EvalSummary
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.stages import PENDING, Stage, Success
from zthumb_contract.steps import RunPaths, StepDefinition, deploy_env

from zthumb_operator import builders as b
from zthumb_operator import conditions, identity, queues, readers, serverkey
from zthumb_operator import multinode as mn
from zthumb_operator.api import Api, ConflictError, ForbiddenError
from zthumb_operator.cache import Cache
from zthumb_operator.config import OperatorConfig
from zthumb_operator.status import WAIT, Done, Failed, Outcome, Pass, again_in, camel

log = logging.getLogger("zthumb_operator")


class JobStages:
    def __init__(self, config: OperatorConfig, api: Api, cache: Cache) -> None:
        self.config = config
        self.api = api
        self.cache = cache

    def job_settings(self, spec: LoRAFinetuneSpec) -> b.JobSettings:
        return b.JobSettings(
            image=spec.images.trainer or self.config.trainer_image,
            run_as_user=self.config.run_as_user,
            fs_group=self.config.fs_group,
            backoff_limit=self.config.backoff_limit,
            active_deadline_seconds=self.config.active_deadline_seconds,
            ttl_seconds_after_finished=self.config.job_ttl_seconds,
        )

    async def ensure_job(self, p: Pass, spec: LoRAFinetuneSpec, step: StepDefinition) -> dict[str, Any]:
        meta = p.run["metadata"]
        ns = meta["namespace"]
        jname = mn.step_job_name(meta["name"], step)
        job = self.cache.jobs.get((ns, jname))
        created = False
        if job is None:
            if step.reports_progress:  # the pod's token may patch this run's status, nothing else
                await identity.ensure_identity(self.api, p.run)
            if step.nodes > 1:
                # The Service first, so that pod 0's DNS name exists by the time the pods start.
                await self.ensure_service(p.run, mn.build_service(p.run, jname, step))
            body = self.build_job(p, spec, step)
            try:
                job = await self.api.create_job(ns, body)
                created = True
            except ConflictError:
                job = await self.api.get_job(ns, jname)  # adopt: never a second Job for a step
                if job is None:
                    raise kopf.TemporaryError(f"Job {jname} vanished while being adopted", delay=1) from None
            self.cache.store_job((ns, jname), job)
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

    def build_job(self, p: Pass, spec: LoRAFinetuneSpec, step: StepDefinition) -> dict[str, Any]:
        settings = self.job_settings(spec)
        if step.nodes > 1:
            return mn.build_indexed_job(step, run=p.run, spec=spec, settings=settings)
        return b.build_job(step, run=p.run, spec=spec, settings=settings)

    async def check_queue_capacity(
        self, p: Pass, spec: LoRAFinetuneSpec, steps: Iterable[StepDefinition]
    ) -> None:
        """Refuse (a bad spec) a run with a Job that spec.queueName's ClusterQueue can never admit
        whole: before its first Job, not after hours of the steps before it."""
        if not spec.queue_name:
            return
        ns, queue = p.run["metadata"]["namespace"], spec.queue_name
        try:
            local = await self.api.get_kueue_object("localqueues", queue, ns)
            cluster_queue = str(((local or {}).get("spec") or {}).get("clusterQueue") or "")
            found = await self.api.get_kueue_object("clusterqueues", cluster_queue) if cluster_queue else None
        except ForbiddenError as exc:
            log.info("cannot read Kueue queue %s/%s (%s): leaving its capacity to Kueue", ns, queue, exc)
            return
        if found is None:
            return  # no Kueue, or no such queue (yet): the Job waits as Queued and Kueue says why
        short = queues.shortfalls([self.build_job(p, spec, step) for step in steps], found)
        if short:
            raise kopf.PermanentError(
                queues.describe(
                    short, gpu_resource=spec.resources.gpu_resource_name, queue=queue,
                    cluster_queue=cluster_queue,
                )
            )  # fmt: skip

    async def ensure_service(self, run: Mapping[str, Any], body: dict[str, Any]) -> None:
        """Create the multi-node step's headless Service, or adopt ours (created by an earlier pass
        just before its Job). One of an earlier run of the same name is waited for, as its Job is
        (``ensure_job``): the garbage collector is deleting it, and pod 0's name would go with it."""
        meta = body["metadata"]
        try:
            await self.api.create_service(meta["namespace"], body)
            return
        except ConflictError:
            service = await self.api.get_service(meta["namespace"], meta["name"])
        owners = {r.get("uid") for r in ((service or {}).get("metadata") or {}).get("ownerReferences") or []}
        if run["metadata"]["uid"] not in owners:
            raise kopf.TemporaryError(
                f"Service {meta['name']} belongs to an earlier LoRAFinetune of the same name and is "
                "still being deleted; waiting for the garbage collector",
                delay=5,
            )

    async def drive(self, p: Pass, spec: LoRAFinetuneSpec, stage: Stage, step: StepDefinition) -> Outcome:
        """Drive one Job stage as far as it goes now."""
        if stage.calls_server:
            keyed = await self.with_server_key(p, spec, step)
            if isinstance(keyed, Failed):
                return keyed
            step = keyed
        job = await self.ensure_job(p, spec, step)
        ns = p.run["metadata"]["namespace"]
        jname = job["metadata"]["name"]
        pods = list(self.cache.pods.get((ns, jname), {}).values())
        state = readers.job_state(job, pods)
        cond = stage.condition
        if state.state == "succeeded":
            return await self.succeeded(p, spec, stage, job, pods)
        if state.state == "failed":
            reason = f"{camel(step.name)}Failed"
            message = state.message
            if step.nodes > 1:
                if not readers.failed_node(pods):  # the failed pod's last event may not be cached yet
                    pods = await self.api.list_job_pods(ns, jname)
                message = readers.failure_message(job, pods)
            return Failed(reason, f"step {step.name}: Job {jname} failed ({state.reason}): {message}")
        if state.state == "suspended":
            p.condition(cond, "False", "Queued", f"Job {jname} is suspended")
            p.phase(
                PENDING,
                "Queued",
                f"step {step.name}: Job {jname} waits for Kueue queue {spec.queue_name} to admit it",
            )
            return WAIT
        if state.state == "unschedulable":
            since = crd.parse_time(state.since) if state.since else p.now
            deadline = self.config.unschedulable_deadline_seconds
            waited = p.now - since
            scheduler = f"{state.reason}: {state.message}"
            if waited >= deadline:
                await self.api.delete_job(ns, jname)
                p.condition(b.SCHEDULED, "False", "Unschedulable", scheduler)
                return Failed(
                    "Unschedulable",
                    f"step {step.name}: no node could run Job {jname} for {int(waited)}s "
                    f"(deadline {deadline}s); the scheduler said: {scheduler}. Lower resources.gpus, "
                    "fix resources.nodeSelector/tolerations, or add capacity.",
                )
            p.condition(b.SCHEDULED, "False", "Unschedulable", scheduler)
            p.condition(cond, "False", "Unschedulable", f"Job {jname} cannot be scheduled")
            p.phase(
                PENDING,
                "Unschedulable",
                f"step {step.name}: Job {jname} cannot be scheduled yet ({scheduler}); "
                f"failing after {deadline}s",
            )
            return again_in(max(1.0, deadline - waited))
        # running
        if step.reports_progress:
            self.progress_percent(p)
        if conditions.get_condition(p.status.get("conditions"), b.SCHEDULED):
            p.condition(b.SCHEDULED, "True", "Scheduled", f"Job {jname} has been scheduled")
        p.condition(cond, "False", "Running", f"Job {jname} is running")
        p.phase(stage.phase, "Running", f"step {step.name}: Job {jname} is running")
        return WAIT

    async def with_server_key(
        self, p: Pass, spec: LoRAFinetuneSpec, step: StepDefinition
    ) -> StepDefinition | Failed:
        """``step`` with the server's API key by reference, as its Deployment has it now; ``Failed``
        when the key cannot be referenced. Only before the Job exists: it is what the Job was built
        with."""
        ns = p.run["metadata"]["namespace"]
        if (ns, mn.step_job_name(p.run["metadata"]["name"], step)) in self.cache.jobs:
            return step
        target = spec.deploy.deployment
        deployment = await self.api.get_deployment(ns, target)
        try:
            if deployment is None:
                raise serverkey.ServerKeyError(
                    serverkey.DEPLOYMENT_NOT_FOUND,
                    f"deployment {target} not found in {ns}: step {step.name} calls its server",
                )
            ref = serverkey.eval_key_ref(deployment, spec.deploy.container, spec.deploy.service_url)
        except serverkey.ServerKeyError as error:
            return Failed(error.reason, f"step {step.name}: {error.message}")
        return serverkey.with_server_key(step, ref)

    @staticmethod
    def progress_percent(p: Pass) -> None:
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

    async def succeeded(
        self,
        p: Pass,
        spec: LoRAFinetuneSpec,
        stage: Stage,
        job: Mapping[str, Any],
        pods: list[dict[str, Any]],
    ) -> Done:
        """The Job succeeded: what its stage's success adds to the status (the table's ``Success``)."""
        name = p.run["metadata"]["name"]
        ns = p.run["metadata"]["namespace"]
        paths = RunPaths(data_root=spec.storage.mount_path, run_name=name, spec=spec)
        message = f"Job {job['metadata']['name']} completed"
        if stage.success is Success.ADAPTER:
            total = spec.training.max_train_steps
            progress = dict(p.status.get("progress") or {})
            # Also when the pod's last report was lost: no stale estimate on a finished run.
            progress.update(
                {"step": total, "totalSteps": total, "percent": 100, "estimatedRemainingSeconds": 0}
            )
            p.set("progress", progress)
            p.set(
                "adapterPath",
                deploy_env(RunPaths(self.config.server_data_root, name, spec))[contract_env.LORA_PATH],
            )
            message += f"; adapter exported to {paths.adapter_dir}"
            if not readers.terminated_messages(pods):  # the pod cache may not hold the finished pod yet
                pods = await self.api.list_job_pods(ns, job["metadata"]["name"])
            training = readers.train_results(pods)  # steps/s, peak memory: the train pod's own numbers
            if training:
                p.set("training", training)
        if stage.success is Success.REPORT:
            summary = readers.eval_summary(pods)
            if summary is None and not readers.terminated_messages(pods):
                fresh = await self.api.list_job_pods(ns, job["metadata"]["name"])
                summary = readers.eval_summary(fresh)
                if (
                    summary is None
                    and not readers.terminated_messages(fresh)
                    and self.config.simulated_eval_summary
                ):
                    simulated = EvalSummary.from_report(self.config.simulated_eval_summary)  # test hook
                    summary = simulated.status() if simulated is not None else None
            if summary is not None:
                p.set("evalSummary", summary)
            p.set("reportPath", paths.report)
            p.set("reportUrl", paths.report_url)
            message += f"; report {paths.report}"
        duration = readers.step_duration_seconds(job)
        return Done("Completed", message, f"{camel(stage.name)}Completed", duration_seconds=duration)
