"""The LoRAFinetune spec as Python values.

The CRD in ``crds/`` is the source of truth for the API; this model mirrors its
shape and defaults so that the operator, the local runner and the trainer read a
spec the same way (a unit test keeps the two in step). Field names are the CRD's
camelCase names, exposed in snake_case.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from zthumb_contract.dataset_spec import DatasetSpec
from zthumb_contract.eval_spec import EvalSpec
from zthumb_contract.schedules import LrScheduler, schedule_refusal
from zthumb_contract.spec_base import MAX_DOWNLOAD_BYTES, SECRET_NAME, SecretKeyRef, SpecModel
from zthumb_contract.tracking_spec import TrackingSpec
from zthumb_contract.volume_areas import check_apart, on_volume

SDXL_BASE_URL = (
    "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors"
)
SDXL_BASE_SHA256 = "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"
SDXL_BASE_PATH = "models/sd_xl_base_1.0.safetensors"
# The small JSON/tokenizer files of the same repository: the single-file checkpoint
# holds weights only, and loading it offline needs the diffusers configs beside it.
SDXL_CONFIG_URL = "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
SDXL_CONFIG_PATH = "models/sd_xl_base_1.0-config"

# Download limits (``maxBytes``): a server that sends more (or never stops) cannot fill the shared
# volume. Each default leaves room above what it is for: SDXL base is 6.94 GB; the eval's CLIP's is
# in ``eval_spec``, a dataset archive's in ``dataset_spec``.
BASE_MODEL_MAX_BYTES = 16 * 2**30


class BaseModelSpec(SpecModel):
    url: str = SDXL_BASE_URL
    sha256: str = Field(SDXL_BASE_SHA256, pattern=r"^[0-9a-f]{64}$")
    path: Annotated[str, on_volume("baseModel.path")] = SDXL_BASE_PATH
    config_url: str = SDXL_CONFIG_URL
    config_path: Annotated[str, on_volume("baseModel.configPath")] = SDXL_CONFIG_PATH
    token_secret_ref: SecretKeyRef | None = None
    max_bytes: int = Field(BASE_MODEL_MAX_BYTES, ge=1, le=MAX_DOWNLOAD_BYTES)
    # A token is never sent over plain http:// unless this is set (a trusted in-cluster mirror).
    allow_insecure_http: bool = False


class ValidationSpec(SpecModel):
    """Sample images rendered by the train step itself with the current adapter (no server): a
    labelled grid (prompts x seeds) every ``every_n_steps`` steps and at the end, under
    ``<run-dir>/samples/``. No prompts (the default): off."""

    prompts: list[str] = Field(default_factory=list, max_length=16)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, max_length=16)
    # None: only at the end of training.
    every_n_steps: int | None = Field(None, ge=1)
    # None: the dataset's resolution.
    width: int | None = Field(None, ge=64, le=2048, multiple_of=8)
    height: int | None = Field(None, ge=64, le=2048, multiple_of=8)
    steps: int = Field(20, ge=1, le=100)
    guidance: float = Field(5.0, ge=0, le=30)


class TrainingSpec(SpecModel):
    rank: int = Field(16, ge=1, le=256)
    alpha: float = Field(16, gt=0)
    learning_rate: float = Field(1e-4, gt=0, le=1)
    max_train_steps: int = Field(1000, ge=1)
    batch_size: int = Field(1, ge=1, le=64)
    gradient_accumulation_steps: int = Field(1, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = "bf16"
    gradient_checkpointing: bool = True
    seed: int = Field(42, ge=0)
    checkpointing_steps: int = Field(250, ge=1)
    checkpoints_total_limit: int = Field(3, ge=1)
    train_text_encoder: bool = False
    snr_gamma: float | None = Field(5.0, ge=0)
    noise_offset: float = Field(0.0, ge=0, le=1)
    # torch.compile of the UNet: opt-in, it costs a minute or more of compilation per new shape
    # on a GPU before the first steps are faster.
    compile: bool = False
    # What ``compile`` covers: ``blocks``, the 70 transformer blocks (one class, compiled once for
    # all of them); ``unet``, the whole UNet as one graph (a longer first compile, but no eager
    # ResNet and up/down-sampling code launching kernels one by one between the blocks).
    compile_scope: Literal["blocks", "unet"] = "blocks"
    # inductor's mode: ``reduce-overhead`` replays each compiled graph as a CUDA graph, so a step
    # launches no kernels from Python (batch 1 on an H100 is launch-bound, not compute-bound).
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "default"
    # adamw8bit: bitsandbytes (CUDA or CPU); the train step probes its device and refuses it up front
    # where the 8-bit kernels do not run.
    optimizer: Literal["adamw", "prodigy", "adamw8bit"] = "adamw"
    use_dora: bool = False
    # None: no EMA. Set: an EMA of the LoRA weights with this decay is trained alongside and exported.
    ema_decay: float | None = Field(None, gt=0, lt=1)
    lr_scheduler: LrScheduler = "constant"  # schedules.py
    lr_warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)  # None: no gradient clipping
    caption_dropout: float = Field(0.0, ge=0, le=1)  # of a sample's caption, trigger word included
    random_flip: bool = False  # half the samples, SDXL's crop conditioning mirrored with them
    # One CLI option holding JSON (``--validation '{"prompts": [...]}'``): see steps.spec_args.
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    # MLflow besides TensorBoard (tracking_spec.py); one JSON option as validation.
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    @model_validator(mode="after")
    def _a_schedule_that_runs(self) -> TrainingSpec:
        if refusal := schedule_refusal(self):
            raise ValueError(refusal)
        return self


MAX_NODES = 64


class ResourcesSpec(SpecModel):
    gpus: int = Field(1, ge=0, le=16)
    # Pods of the train step (one per node, each with ``gpus`` GPUs): >1 runs an Indexed Job with
    # a static torchrun rendezvous (docs/ARCHITECTURE.md, "Multi-node training").
    nodes: int = Field(1, ge=1, le=MAX_NODES)
    gpu_resource_name: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, object]] = Field(default_factory=list)
    cpu: str = "4"
    memory: str = "32Gi"

    @field_validator("nodes")
    @classmethod
    def _nodes_need_gpus(cls, nodes: int, info: ValidationInfo) -> int:
        # The CRD's CEL rule on spec.resources says the same; this one catches a spec that
        # bypassed the API server (and the local runner's YAML). ``gpus`` is declared first, so
        # it is in ``info.data`` unless it was invalid itself.
        gpus = info.data.get("gpus")
        if nodes > 1 and gpus == 0:
            raise ValueError(
                f"nodes: {nodes} needs gpus >= 1: multi-node training runs one process per GPU "
                "on each node (set nodes: 1 to train on a CPU)"
            )
        return nodes


class StorageSpec(SpecModel):
    claim_name: str = "zthumb-data"
    mount_path: str = "/data"


class DeploySpec(SpecModel):
    enabled: bool = True
    deployment: str = "zthumb"
    container: str = "zthumb"
    lora_scale: float = Field(0.8, ge=0, le=2)
    rollout_timeout_seconds: int = Field(600, ge=10)
    service_url: str | None = None


class _SecretNames:
    """Marks a field that lists Secret names: the operator checks each like a ``*SecretRef``."""


SECRET_NAMES = _SecretNames()


class ImagesSpec(SpecModel):
    # Unset: the operator's ZTHUMB_OPERATOR_TRAINER_IMAGE.
    trainer: str | None = None
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    # The step pods' imagePullSecrets, for a trainer image in a private registry. Each is one of
    # the Secrets the operator checks (the allow-runs label, where the operator requires it).
    pull_secrets: Annotated[
        list[Annotated[str, Field(pattern=SECRET_NAME, max_length=253)]], SECRET_NAMES
    ] = Field(default_factory=list, max_length=8)


class LoRAFinetuneSpec(SpecModel):
    base_model: BaseModelSpec = Field(default_factory=BaseModelSpec)
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    deploy: DeploySpec = Field(default_factory=DeploySpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    queue_name: str | None = None
    images: ImagesSpec = Field(default_factory=ImagesSpec)

    @model_validator(mode="after")
    def _gate_needs_a_deployed_evaluation(self) -> LoRAFinetuneSpec:
        # The CRD's CEL rule on spec says the same, for a spec that bypassed the API server.
        if self.eval.gate.active and not (self.eval.enabled and self.deploy.enabled):
            raise ValueError(
                "eval.gate needs eval.enabled and deploy.enabled: the gate judges the deployed "
                "adapter's evaluation (remove the gate to train only)"
            )
        gate = self.eval.gate
        clip_checks = gate.min_clip_i_gain is not None or gate.max_clip_t_drop is not None
        if clip_checks and not self.eval.clip.enabled:
            raise ValueError(
                "eval.gate.minClipIGain and maxClipTDrop need eval.clip.enabled: without CLIP nothing "
                "measures them"
            )
        if gate.max_leakage is not None and not (self.eval.clip.enabled and self.eval.leakage_prompts):
            raise ValueError(
                "eval.gate.maxLeakage needs eval.clip.enabled and eval.leakagePrompts: they measure it"
            )
        if gate.min_dino_gain is not None and not self.eval.dino.enabled:
            raise ValueError(
                "eval.gate.minDinoGain needs eval.dino.enabled: without DINO nothing measures it"
            )
        if gate.max_aesthetic_drop is not None and not self.eval.aesthetic.enabled:
            raise ValueError(
                "eval.gate.maxAestheticDrop needs eval.aesthetic.enabled: without the aesthetic head "
                "nothing measures it"
            )
        if self.eval.aesthetic.enabled and not self.eval.clip.enabled:
            raise ValueError(
                "eval.aesthetic.enabled needs eval.clip.enabled: the aesthetic head scores CLIP's "
                "image embeddings"
            )
        return self

    @model_validator(mode="after")
    def _leakage_prompts_without_the_trigger_word(self) -> LoRAFinetuneSpec:
        word = self.dataset.trigger_word.lower()
        for index, prompt in enumerate(self.eval.leakage_prompts):
            if word and word in prompt.lower().split():
                raise ValueError(
                    f"eval.leakagePrompts[{index}] holds dataset.triggerWord {self.dataset.trigger_word!r}: "
                    "leakage prompts measure what the adapter does to prompts without its trigger"
                )
        return self

    @model_validator(mode="after")
    def _paths_apart(self) -> LoRAFinetuneSpec:
        # The CRD's CEL rules on spec say the same, one per pair of path fields in one area.
        check_apart(self.model_dump(by_alias=True))
        return self

    @classmethod
    def from_manifest(cls, manifest: dict[str, object]) -> LoRAFinetuneSpec:
        """Parse the ``spec`` of a LoRAFinetune object (a dict as kubectl or kopf gives it)."""
        return cls.model_validate(manifest.get("spec") or {})
