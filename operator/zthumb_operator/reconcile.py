"""The run state machine: one LoRAFinetune through the stages of ``zthumb_contract.stages``
(fetch-model → prepare-dataset → train → deploy → eval), advanced on Job, pod and
LoRAFinetune events.

Design:
- Watch events (kopf ``on.event`` handlers) keep an in-memory cache of runs, the
  operator's Jobs and their pods (``cache``), and ask for a reconcile of the owning
  run. A per-run worker coalesces requests: a run is never reconciled twice at once
  (``workqueue``).
- The status is the memory: a stage whose condition is True is never run again
  (even after its Job was garbage-collected by its TTL). Job stages (``jobstages``)
  have deterministic Job names and adopt an existing Job instead of creating a second.
- All status changes of one reconcile go out as one merge patch of
  ``/status`` (``progress`` belongs to the train pod and is only touched at the
  start and end of training), plus one Event per transition (``status.Pass``).
- Driving a stage comes to an outcome (``status``): ``Wait`` (look again later), ``Done`` (its
  condition turns True, on to the next stage) or ``Failed`` (its condition turns False and the
  run fails). The outcome is written here, in one place, into the pass's one status patch.
- Deploy (``rollout``): one rollout per Deployment at a time, under a lock annotation
  on the Deployment; a failed rollout restores the previous adapter, and so does an
  evaluation that fails ``spec.eval.gate``, judged here once the eval stage is done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import kopf
from pydantic import ValidationError
from zthumb_contract.gate import GATE_FAILED_REASON, evaluate_gate
from zthumb_contract.results import EvalSummary
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.stages import (
    FAILED,
    SUCCEEDED,
    TERMINAL_PHASES,
    Runner,
    Stage,
    Success,
    active_stages,
    build_steps,
)
from zthumb_contract.steps import StepDefinition

from zthumb_operator import admission, conditions, metrics
from zthumb_operator.api import Api
from zthumb_operator.cache import Cache
from zthumb_operator.config import OperatorConfig
from zthumb_operator.jobstages import JobStages
from zthumb_operator.rollout import Rollouts
from zthumb_operator.status import Done, Failed, Key, Outcome, Pass, Wait
from zthumb_operator.workqueue import WorkQueue

log = logging.getLogger("zthumb_operator")


class Controller:
    """The cache, the per-run work queue, and the state machine that drives the stages."""

    def __init__(self, config: OperatorConfig, api: Api, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.api = api
        self.clock = clock
        # Looked up at each call, so that a test may replace ``reconcile``.
        self.queue = WorkQueue(lambda key: self.reconcile(key))  # noqa: PLW0108
        self.cache = Cache(self.queue)
        self.runs, self.jobs, self.pods = self.cache.runs, self.cache.jobs, self.cache.pods
        self.rollouts = Rollouts(config, api, self.cache, flush=self._flush)
        self.job_stages = JobStages(config, api, self.cache)
        # Runs (uids) whose spec the admission settings were checked against since this start.
        self.admitted: set[str] = set()
        # What the kopf handlers and the runtime call.
        self.on_run_event = self.cache.on_run_event
        self.on_job_event = self.cache.on_job_event
        self.on_pod_event = self.cache.on_pod_event
        self.request = self.queue.request
        self.idle = self.queue.idle
        self.stop = self.queue.stop

    def resync(self) -> None:
        """Safety net: reconcile every run that is not finished."""
        metrics.set_run_phases((r.get("status") or {}).get("phase") for r in self.runs.values())
        self.admitted &= {run["metadata"].get("uid") for run in self.runs.values()}
        for key, run in list(self.runs.items()):
            if (run.get("status") or {}).get("phase") not in TERMINAL_PHASES:
                self.request(key)

    async def reconcile(self, key: Key) -> float | None:
        """Advance one run as far as it can go now; return seconds until it wants another look."""
        run = self.cache.runs.get(key)
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
        except admission.NotAllowedError as exc:
            p.phase(FAILED, admission.REASON, str(exc), event="Warning")
            return None
        finally:
            await self._flush(p)

    async def _flush(self, p: Pass) -> None:
        ns, name = p.run["metadata"]["namespace"], p.run["metadata"]["name"]
        if p.patch:
            updated = await self.api.patch_run_status(ns, name, p.patch)
            p.patch = {}
            self.cache.store_run((ns, name), updated)
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
            # A check of the whole spec has no location; its message starts with the field it names.
            errors = "; ".join(
                f"spec.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"]
                for e in exc.errors()[:5]
            )
            raise kopf.PermanentError(f"invalid spec: {errors}") from None

    def server_url(self, run: Mapping[str, Any], spec: LoRAFinetuneSpec) -> str:
        if spec.deploy.service_url:
            return spec.deploy.service_url
        return self.config.eval_server_url_template.format(
            deployment=spec.deploy.deployment, namespace=run["metadata"]["namespace"]
        )

    async def _advance(self, p: Pass) -> float | None:
        spec = self._parse(p.run)
        name = p.run["metadata"]["name"]
        steps = {
            s.name: s for s in build_steps(name, spec, spec.storage.mount_path, self.server_url(p.run, spec))
        }
        stages = active_stages(spec)
        uid = p.run["metadata"]["uid"]
        if uid not in self.admitted:  # before any Job; once per run and start (settings may change)
            await admission.check_run(self.api, self.config, p.run, spec)
            self.admitted.add(uid)
        if not p.status.get("phase"):
            await self.job_stages.check_queue_capacity(p, spec, steps.values())
            p.event("Normal", "Accepted", f"run {name}: steps {', '.join(s.name for s in stages)}")
        for stage in stages:
            if conditions.condition_true(p.status.get("conditions"), stage.condition):
                continue
            match await self._drive(p, spec, stage, steps):
                case Wait(requeue_after=after):
                    return after
                case Failed(reason=reason, message=message):
                    p.fail(stage.condition, reason, message)
                    return None
                case Done() as done:
                    self._complete(p, stage, done)
        self._succeed(p, spec)
        return None

    async def _drive(
        self, p: Pass, spec: LoRAFinetuneSpec, stage: Stage, steps: Mapping[str, StepDefinition]
    ) -> Outcome:
        """Drive one stage as far as it goes now; a finished evaluation is judged by the gate."""
        if stage.runner is Runner.DEPLOY:
            return await self.rollouts.drive(p, spec)
        outcome = await self.job_stages.drive(p, spec, stage, steps[stage.name])
        if isinstance(outcome, Done) and stage.success is Success.REPORT:
            return await self._judge_gate(p, spec, outcome)
        gated = spec.eval.gate.active and spec.deploy.enabled
        if isinstance(outcome, Failed) and stage.success is Success.REPORT and gated:
            # The gate cannot judge an adapter the evaluation never measured: it fails closed, so an
            # unevaluated adapter is not left served behind a gate the user asked for.
            why = f"{outcome.message}; the eval gate could not judge the adapter"
            return await self.rollouts.revert(p, spec, outcome.reason, why)
        return outcome

    async def _judge_gate(self, p: Pass, spec: LoRAFinetuneSpec, evaluated: Done) -> Outcome:
        """``spec.eval.gate`` on the numbers the eval stage copied into ``status.evalSummary`` (this
        operator's own verdict, not the eval pod's): a failed check restores the previous adapter
        and fails the run (``Rollouts.revert``)."""
        summary = EvalSummary.from_report(p.status.get("evalSummary")) or EvalSummary()
        verdict = evaluate_gate(spec.eval.gate, summary)
        if verdict is None:
            return evaluated
        p.set("evalGate", verdict.status())
        if not verdict.passed:
            return await self.rollouts.revert(p, spec, GATE_FAILED_REASON, f"eval gate {verdict.message}")
        return replace(evaluated, message=f"{evaluated.message}; gate {verdict.message}")

    @staticmethod
    def _complete(p: Pass, stage: Stage, done: Done) -> None:
        if done.duration_seconds is not None:
            metrics.STEP_DURATION.labels(step=stage.name).observe(done.duration_seconds)
        p.condition(stage.condition, "True", done.reason, done.message)
        p.event("Normal", done.event, done.message)

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
