"""The pipeline's step definitions: one place for each step's command, args, env and paths.

The operator turns these into Kubernetes Jobs and the local runner into processes,
so the two paths cannot drift. Everything here is a pure function of the run name,
the spec and the data root (the volume's mount path in a pod, a work directory on
a laptop); nothing imports torch or kubernetes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

from zthumb_contract import env
from zthumb_contract.spec import LoRAFinetuneSpec, SecretKeyRef

TRAINER_COMMAND = ("zthumb-train",)


@dataclass(frozen=True)
class RunPaths:
    """Where one run reads and writes, below the data root (SPEC §2 output conventions)."""

    data_root: str
    run_name: str
    spec: LoRAFinetuneSpec

    def _under_root(self, relative: str) -> str:
        return str(PurePosixPath(self.data_root) / relative)

    @property
    def base_model(self) -> str:
        return self._under_root(self.spec.base_model.path)

    @property
    def base_model_config(self) -> str:
        return self._under_root(self.spec.base_model.config_path)

    @property
    def dataset(self) -> str:
        return self._under_root(self.spec.dataset.path)

    @property
    def run_dir(self) -> str:
        return self._under_root(f"outputs/lora/{self.run_name}")

    @property
    def lora_root(self) -> str:
        return self._under_root("models/lora")

    @property
    def adapter_dir(self) -> str:
        return self._under_root(f"models/lora/{self.run_name}")

    @property
    def eval_dir(self) -> str:
        return self._under_root(f"outputs/lora_eval/{self.run_name}")

    @property
    def report(self) -> str:
        return f"{self.eval_dir}/report.md"


@dataclass(frozen=True)
class StepDefinition:
    """One step as a container would run it: ``command + args`` with ``env``."""

    name: str
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    # Env vars whose values come from a Secret (never inlined into a Job spec or a log).
    secret_env: dict[str, SecretKeyRef] = field(default_factory=dict)
    gpu: bool = False
    reports_progress: bool = False
    command: tuple[str, ...] = TRAINER_COMMAND

    @property
    def argv(self) -> list[str]:
        return [*self.command, *self.args]


def _flag(name: str, enabled: bool) -> str:
    return f"--{name}" if enabled else f"--no-{name}"


def fetch_model_step(paths: RunPaths) -> StepDefinition:
    base = paths.spec.base_model
    secret_env = {"HF_TOKEN": base.token_secret_ref} if base.token_secret_ref else {}
    return StepDefinition(
        name="fetch-model",
        args=(
            "fetch-model",
            "--url", base.url,
            "--sha256", base.sha256,
            "--output", paths.base_model,
            "--config-url", base.config_url,
            "--config-dir", paths.base_model_config,
        ),
        secret_env=secret_env,
    )  # fmt: skip


def prepare_dataset_step(paths: RunPaths) -> StepDefinition:
    dataset = paths.spec.dataset
    return StepDefinition(
        name="prepare-dataset",
        args=(
            "prepare-dataset",
            "--dataset", paths.dataset,
            "--output", paths.run_dir,
            "--resolution", str(dataset.resolution),
            "--trigger-word", dataset.trigger_word,
            "--caption-format", dataset.caption_format,
            "--missing-caption", dataset.missing_caption,
            _flag("bucketing", dataset.bucketing),
        ),
    )  # fmt: skip


def train_step(paths: RunPaths) -> StepDefinition:
    training = paths.spec.training
    args = [
        "train",
        "--run-name", paths.run_name,
        "--base-model", paths.base_model,
        "--model-config", paths.base_model_config,
        "--run-dir", paths.run_dir,
        "--export-dir", paths.adapter_dir,
        "--base-model-sha256", paths.spec.base_model.sha256,
        "--trigger-word", paths.spec.dataset.trigger_word,
        "--rank", str(training.rank),
        "--alpha", str(training.alpha),
        "--learning-rate", str(training.learning_rate),
        "--max-train-steps", str(training.max_train_steps),
        "--batch-size", str(training.batch_size),
        "--gradient-accumulation-steps", str(training.gradient_accumulation_steps),
        "--mixed-precision", training.mixed_precision,
        _flag("gradient-checkpointing", training.gradient_checkpointing),
        "--seed", str(training.seed),
        "--checkpointing-steps", str(training.checkpointing_steps),
        "--checkpoints-total-limit", str(training.checkpoints_total_limit),
        _flag("train-text-encoder", training.train_text_encoder),
        "--noise-offset", str(training.noise_offset),
        "--gpus", str(paths.spec.resources.gpus),
    ]  # fmt: skip
    if training.snr_gamma is not None:
        args += ["--snr-gamma", str(training.snr_gamma)]
    return StepDefinition(name="train", args=tuple(args), gpu=True, reports_progress=True)


def eval_step(paths: RunPaths, server_url: str) -> StepDefinition:
    evaluation = paths.spec.eval
    args = [
        "eval",
        "--server-url", server_url,
        "--run-name", paths.run_name,
        "--output", paths.eval_dir,
        # Relative to the server's LoRA root, which is where train exported it.
        "--lora-path", paths.run_name,
        "--trigger-word", paths.spec.dataset.trigger_word,
        "--steps", str(evaluation.steps),
    ]  # fmt: skip
    for prompt in evaluation.prompts:
        args += ["--prompt", prompt]
    for seed in evaluation.seeds:
        args += ["--seed", str(seed)]
    for scale in evaluation.scales:
        args += ["--scale", str(scale)]
    if evaluation.width:
        args += ["--width", str(evaluation.width)]
    if evaluation.height:
        args += ["--height", str(evaluation.height)]
    return StepDefinition(name="eval", args=tuple(args))


def deploy_env(paths: RunPaths) -> dict[str, str]:
    """The server env that points it at this run's adapter (the deploy step's whole effect)."""
    return {env.LORA_PATH: paths.adapter_dir, env.LORA_SCALE: str(paths.spec.deploy.lora_scale)}
