"""The pipeline's stages, in order: the one table that the operator, the local runner and
the metrics read.

Each stage says which ``status.phase`` it shows while it runs, which condition turns
True once it is done, what runs it, and what its success adds to the status. A
stage run by a Job (a process on a laptop) has a step definition (``steps``); the
deploy stage is the operator pointing the server at the adapter (on a laptop:
starting the server). Adding a stage is one entry here plus its step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.steps import (
    RunPaths,
    StepDefinition,
    eval_step,
    fetch_model_step,
    prepare_dataset_step,
    train_step,
)

# Phases outside the stages.
PENDING, SUCCEEDED, FAILED = "Pending", "Succeeded", "Failed"
TERMINAL_PHASES = frozenset({SUCCEEDED, FAILED})


class Runner(StrEnum):
    """What runs a stage."""

    JOB = "job"  # its step as a Kubernetes Job (locally: a process)
    DEPLOY = "deploy"  # the operator patches the server's Deployment (locally: starts the server)


class Success(StrEnum):
    """What a stage's success adds to the run's status, beyond its condition."""

    NOTHING = "nothing"
    ADAPTER = "adapter"  # progress at 100 %, adapterPath
    REPORT = "report"  # the eval summary numbers (termination message), reportPath


# (paths, the server URL the eval step calls) -> the step.
StepBuilder = Callable[[RunPaths, str], StepDefinition]


def _always(_spec: LoRAFinetuneSpec) -> bool:
    return True


def _deploy_enabled(spec: LoRAFinetuneSpec) -> bool:
    return spec.deploy.enabled


def _eval_enabled(spec: LoRAFinetuneSpec) -> bool:
    # Eval calls the server the deploy stage pointed at the adapter: no deploy, no eval.
    return spec.eval.enabled and spec.deploy.enabled


@dataclass(frozen=True)
class Stage:
    name: str
    phase: str  # status.phase while the stage runs
    condition: str  # condition type, True once the stage is done
    runner: Runner
    success: Success = Success.NOTHING
    enabled: Callable[[LoRAFinetuneSpec], bool] = _always
    step: StepBuilder | None = None  # runner JOB: the step it runs
    # Its step calls the server: it gets the server's API key (env.API_KEY) the way the server
    # does, from the same Secret in a cluster, from the key the local runner made on a laptop.
    calls_server: bool = False


STAGES: tuple[Stage, ...] = (
    Stage("fetch-model", "Downloading", "ModelFetched", Runner.JOB,
          step=lambda paths, _url: fetch_model_step(paths)),
    Stage("prepare-dataset", "PreparingDataset", "DatasetPrepared", Runner.JOB,
          step=lambda paths, _url: prepare_dataset_step(paths)),
    Stage("train", "Training", "Trained", Runner.JOB, Success.ADAPTER,
          step=lambda paths, _url: train_step(paths)),
    Stage("deploy", "Deploying", "Deployed", Runner.DEPLOY, enabled=_deploy_enabled),
    Stage("eval", "Evaluating", "Evaluated", Runner.JOB, Success.REPORT, enabled=_eval_enabled,
          step=eval_step, calls_server=True),
)  # fmt: skip

STAGE = {stage.name: stage for stage in STAGES}
# Every phase, in pipeline order (the CRD's enum, the metrics' labels).
PHASES = (PENDING, *(stage.phase for stage in STAGES), SUCCEEDED, FAILED)


def active_stages(spec: LoRAFinetuneSpec) -> list[Stage]:
    """The stages this spec runs, in order."""
    return [stage for stage in STAGES if stage.enabled(spec)]


def build_steps(
    run_name: str, spec: LoRAFinetuneSpec, data_root: str, server_url: str
) -> list[StepDefinition]:
    """The Job-running steps of one run, in order (deploy sits between train and eval)."""
    paths = RunPaths(data_root=data_root, run_name=run_name, spec=spec)
    return [stage.step(paths, server_url) for stage in active_stages(spec) if stage.step is not None]
