"""The pipeline's step definitions: one place for each step's command, args, env and paths.

The operator turns these into Kubernetes Jobs and the local runner into processes,
so the two paths cannot drift. Everything here is a pure function of the run name,
the spec and the data root (the volume's mount path in a pod, a work directory on
a laptop); nothing imports torch or kubernetes.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from zthumb_contract import env
from zthumb_contract.dataset_spec import DatasetSourceSpec
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.spec_base import SecretKeyRef
from zthumb_contract.tracking_spec import MLFLOW_CREDENTIAL_KEYS, TrackingSpec
from zthumb_contract.volume_areas import DATASET_CACHE, LORA_ROOT, OUTPUTS

# The train step's TensorBoard event files, below the run dir (``tensorboard --logdir`` on it).
LOGS_DIR = "logs"

TRAINER_COMMAND = ("zthumb-train",)
# The TCP port of the static torchrun rendezvous on pod 0 (node rank 0) of a multi-node train
# step: fixed, since each pod has its own network namespace (torch's own default).
RENDEZVOUS_PORT = 29500
# How long a node waits for the others (torchrun's static rendezvous, and pod 0's DNS name to
# resolve): a pod that never comes makes the others fail instead of hanging.
RENDEZVOUS_TIMEOUT_SECONDS = 600


# Every run's eval report, below the data root; the server serves this directory read-only as
# HTML pages under REPORTS_URL_PREFIX (ZTHUMB_REPORTS_DIR, set by the chart).
EVAL_REPORTS_DIR = f"{OUTPUTS}/lora_eval"
REPORTS_URL_PREFIX = "/reports"


@dataclass(frozen=True)
class RunPaths:
    """Where one run reads and writes, below the data root (docs/ARCHITECTURE.md, "Paths")."""

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
    def dataset_cache(self) -> str:
        """Remote datasets (``spec.dataset.source``), one directory per content hash."""
        return self._under_root(DATASET_CACHE)

    @property
    def clip_model(self) -> str:
        return self._under_root(self.spec.eval.clip.path)

    @property
    def clip_config(self) -> str:
        return self._under_root(self.spec.eval.clip.config_path)

    @property
    def captioning_model(self) -> str:
        return self._under_root(self.spec.dataset.captioning.path)

    @property
    def captioning_config(self) -> str:
        return self._under_root(self.spec.dataset.captioning.config_path)

    @property
    def dino_model(self) -> str:
        return self._under_root(self.spec.eval.dino.path)

    @property
    def dino_config(self) -> str:
        return self._under_root(self.spec.eval.dino.config_path)

    @property
    def aesthetic_model(self) -> str:
        return self._under_root(self.spec.eval.aesthetic.path)

    @property
    def run_dir(self) -> str:
        return self._under_root(f"{OUTPUTS}/lora/{self.run_name}")

    @property
    def logs_dir(self) -> str:
        return f"{self.run_dir}/{LOGS_DIR}"

    @property
    def lora_root(self) -> str:
        return self._under_root(LORA_ROOT)

    @property
    def adapter_dir(self) -> str:
        return self._under_root(f"{LORA_ROOT}/{self.run_name}")

    @property
    def eval_dir(self) -> str:
        return self._under_root(f"{EVAL_REPORTS_DIR}/{self.run_name}")

    @property
    def report(self) -> str:
        return f"{self.eval_dir}/report.md"

    @property
    def report_url(self) -> str:
        """The report's page on the ZThumb server (which serves ``EVAL_REPORTS_DIR``)."""
        return f"{REPORTS_URL_PREFIX}/{self.run_name}/"


@dataclass(frozen=True)
class StepDefinition:
    """One step as a container would run it: ``command + args`` with ``env``."""

    name: str
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    # Env vars whose values come from a Secret (never inlined into a Job spec or a log).
    secret_env: dict[str, SecretKeyRef] = field(default_factory=dict)
    # The same, from keys a Secret may lack (``secretKeyRef.optional``): MLflow's credentials are a
    # username and password or a token, and the pod starts with whichever the Secret holds.
    optional_secret_env: dict[str, SecretKeyRef] = field(default_factory=dict)
    gpu: bool = False
    reports_progress: bool = False
    # Pods that run the step together (one per node, a static torchrun rendezvous): >1 only for
    # train with spec.resources.nodes > 1. The operator then builds an Indexed Job.
    nodes: int = 1
    command: tuple[str, ...] = TRAINER_COMMAND

    @property
    def argv(self) -> list[str]:
        return [*self.command, *self.args]


def _flag(name: str, enabled: bool) -> str:
    return f"--{name}" if enabled else f"--no-{name}"


def option_name(name: str, info: FieldInfo) -> str:
    """The CLI option of a spec field: its name, singular for a list (repeated, one value each)."""
    if typing.get_origin(info.annotation) is list and name.endswith("s"):
        return name[:-1]
    return name


def unset_option(name: str, info: FieldInfo) -> str | None:
    """The flag-less ``--no-<field>`` of a field whose default an absent flag cannot say apart from
    its "nothing": a list whose default has items (``--no-leakage-prompts`` empties it: an empty
    list has no items to repeat) and a field that may be None but defaults to a value
    (``--no-max-grad-norm`` is None: no clipping). None for a field that needs none."""
    default = info.get_default(call_default_factory=True)
    if typing.get_origin(info.annotation) is list:
        if not default or any(getattr(bound, "min_length", 0) for bound in info.metadata):
            return None  # empty by default, or never empty
        return f"no_{name}"
    if default is not None and _may_be_none(info):
        return f"no_{name}"
    return None


def _may_be_none(info: FieldInfo) -> bool:
    return typing.get_origin(info.annotation) in (typing.Union, types.UnionType) and type(
        None
    ) in typing.get_args(info.annotation)


def spec_args(model: BaseModel, exclude: Collection[str] = ()) -> list[str]:
    """The options of a spec section as command-line flags, one per field (the trainer CLI's
    options are generated from the same fields): ``--rank 16``, ``--bucketing``/``--no-bucketing``,
    ``--seed 0 --seed 1`` for a list; a field that is None is left out, or ``--no-<field>`` where
    None (or an empty list) is not what an absent flag means (``unset_option``).

    A nested section (``spec.training.validation``) is one flag whose value is its JSON (camelCase,
    as in the CRD), left out while it equals its defaults: flattening it into prefixed flags
    would need a second naming scheme and a reassembly in the CLI for each nested list."""
    args: list[str] = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if name in exclude:
            continue
        unset = unset_option(name, info)
        if value is None:
            if unset is not None:
                args.append(f"--{unset.replace('_', '-')}")
            continue
        flag = option_name(name, info).replace("_", "-")
        if isinstance(value, BaseModel):
            if value != type(value)():
                args += [f"--{flag}", value.model_dump_json(by_alias=True)]
        elif isinstance(value, bool):
            args.append(_flag(flag, value))
        elif isinstance(value, list):
            if not value and unset is not None:
                args.append(f"--{unset.replace('_', '-')}")
            for item in value:
                args += [f"--{flag}", str(item)]
        else:
            args += [f"--{flag}", str(value)]
    return args


# The spec.baseModel fields fetch-model takes as flags of their own (paths resolved below the data
# root; the token from a Secret, as env); the others (maxBytes, allowInsecureHttp) via spec_args.
FETCH_MODEL_OWN_FIELDS = frozenset({"url", "sha256", "path", "config_url", "config_path", "token_secret_ref"})


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
            *spec_args(base, exclude=FETCH_MODEL_OWN_FIELDS),
        ),
        secret_env=secret_env,
    )  # fmt: skip


def dataset_secret_env(source: DatasetSourceSpec) -> dict[str, SecretKeyRef]:
    """The env of a remote dataset's credentials, from their Secret (never in the argv)."""
    if source.http is not None and source.http.token_secret_ref is not None:
        return {env.DATASET_TOKEN: source.http.token_secret_ref}
    credentials = source.s3.credentials_secret_ref if source.s3 is not None else None
    if credentials is None:
        return {}
    return {
        env.AWS_ACCESS_KEY_ID: SecretKeyRef(name=credentials.name, key=credentials.access_key_id_key),
        env.AWS_SECRET_ACCESS_KEY: SecretKeyRef(name=credentials.name, key=credentials.secret_access_key_key),
    }


def prepare_dataset_step(paths: RunPaths) -> StepDefinition:
    dataset = paths.spec.dataset
    captioning = dataset.captioning
    secret_env = dataset_secret_env(dataset.source)
    captioner: tuple[str, ...] = ()
    if captioning.enabled:
        # The captioner's files below the data root, as the eval's CLIP (its token as HF_TOKEN).
        captioner = ("--captioning-model", paths.captioning_model,
                     "--captioning-config", paths.captioning_config)  # fmt: skip
        if captioning.token_secret_ref is not None:
            secret_env = {**secret_env, "HF_TOKEN": captioning.token_secret_ref}
    return StepDefinition(
        name="prepare-dataset",
        args=(
            "prepare-dataset",
            "--dataset", paths.dataset,
            "--output", paths.run_dir,
            "--dataset-cache", paths.dataset_cache,
            *captioner,
            *spec_args(dataset, exclude={"path"}),
        ),
        secret_env=secret_env,
    )  # fmt: skip


def tracking_secret_env(tracking: TrackingSpec) -> dict[str, SecretKeyRef]:
    """The MLflow credentials' env, each from the key of the same name in their Secret (optional)."""
    ref = tracking.mlflow.credentials_secret_ref if tracking.mlflow is not None else None
    if ref is None:
        return {}
    return {key: SecretKeyRef(name=ref.name, key=key) for key in MLFLOW_CREDENTIAL_KEYS}


def train_step(paths: RunPaths) -> StepDefinition:
    args = (
        "train",
        "--run-name", paths.run_name,
        "--base-model", paths.base_model,
        "--model-config", paths.base_model_config,
        "--run-dir", paths.run_dir,
        "--export-dir", paths.adapter_dir,
        "--base-model-sha256", paths.spec.base_model.sha256,
        "--trigger-word", paths.spec.dataset.trigger_word,
        "--gpus", str(paths.spec.resources.gpus),
        "--nodes", str(paths.spec.resources.nodes),
        *spec_args(paths.spec.training),
    )  # fmt: skip
    return StepDefinition(
        name="train",
        args=args,
        optional_secret_env=tracking_secret_env(paths.spec.training.tracking),
        gpu=True,
        reports_progress=True,
        nodes=paths.spec.resources.nodes,
    )


def eval_step(paths: RunPaths, server_url: str) -> StepDefinition:
    clip = paths.spec.eval.clip
    args = (
        "eval",
        "--server-url", server_url,
        "--run-name", paths.run_name,
        "--output", paths.eval_dir,
        # Relative to the server's LoRA root, which is where train exported it.
        "--lora-path", paths.run_name,
        "--trigger-word", paths.spec.dataset.trigger_word,
        # The train step's summary (steps/s, peak memory) and prepared dataset (CLIP-I's training
        # images) for the report; on the same volume.
        "--train-summary", f"{paths.run_dir}/summary.json",
        # The scale the deploy stage serves: the metrics and the gate compare it with the reference.
        "--served-scale", str(paths.spec.deploy.lora_scale),
        "--clip-model", paths.clip_model,
        "--clip-config", paths.clip_config,
        "--dino-model", paths.dino_model,
        "--dino-config", paths.dino_config,
        "--aesthetic-model", paths.aesthetic_model,
        *spec_args(paths.spec.eval, exclude={"enabled"}),
        # spec.training.tracking, as train's: the report goes to the train step's MLflow run too.
        *spec_args(paths.spec.training, exclude=set(type(paths.spec.training).model_fields) - {"tracking"}),
    )  # fmt: skip
    secret_env = {"HF_TOKEN": clip.token_secret_ref} if clip.enabled and clip.token_secret_ref else {}
    return StepDefinition(
        name="eval",
        args=args,
        secret_env=secret_env,
        optional_secret_env=tracking_secret_env(paths.spec.training.tracking),
    )


def deploy_env(paths: RunPaths) -> dict[str, str]:
    """The server env that points it at this run's adapter (the deploy step's whole effect)."""
    return {env.LORA_PATH: paths.adapter_dir, env.LORA_SCALE: str(paths.spec.deploy.lora_scale)}
