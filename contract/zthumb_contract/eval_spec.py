"""``spec.eval``: the evaluation after training (the eval step; images/trainer/README.md), its
CLIP model and its quality gate; ``zthumb_contract.spec`` nests ``EvalSpec``. The scoring models
besides CLIP are in ``scorer_spec``, what each gate threshold checks in ``gate``."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from zthumb_contract.scorer_spec import AestheticSpec, DinoSpec
from zthumb_contract.spec_base import MAX_DOWNLOAD_BYTES, SecretKeyRef, SpecModel
from zthumb_contract.volume_areas import on_volume

# The CLIP of the eval's CLIP-T / CLIP-I metrics: OpenAI's ViT-L/14 (the image tower of the
# DreamBooth paper's CLIP-I, the text tower SDXL's first encoder), pinned to one revision.
CLIP_REVISION = "32bd64288804d66eefd0ccbe215aa642df71cc41"
CLIP_URL = f"https://huggingface.co/openai/clip-vit-large-patch14/resolve/{CLIP_REVISION}/model.safetensors"
CLIP_SHA256 = "a2bf730a0c7debf160f7a6b50b3aaf3703e7e88ac73de7a314903141db026dcb"
CLIP_PATH = "models/clip-vit-large-patch14.safetensors"
CLIP_CONFIG_URL = f"https://huggingface.co/openai/clip-vit-large-patch14/resolve/{CLIP_REVISION}/"
CLIP_CONFIG_PATH = "models/clip-vit-large-patch14-config"

# Its download limit (``maxBytes``, as spec.baseModel's): room above the 1.71 GB of the CLIP weights,
# so a server that sends more (or never stops) cannot fill the shared volume.
CLIP_MAX_BYTES = 4 * 2**30

# In-distribution: like the training captions. Out-of-distribution: the subject in new contexts.
DEFAULT_EVAL_PROMPTS = ["a photo of {trigger}", "a close-up photo of {trigger}"]
DEFAULT_OOD_PROMPTS = [
    "a watercolor painting of {trigger} in a garden",
    "a photo of {trigger} on a beach at sunset",
]
OOD_PROMPTS_MAX = 16
# Prompts without the trigger word: an adapter should leave them close to the base model.
DEFAULT_LEAKAGE_PROMPTS = [
    "a photo of a city street",
    "a bowl of fruit on a table",
    "a portrait of an old man",
]
TRIGGER_PLACEHOLDER = "{trigger}"
LEAKAGE_PROMPTS_MAX = 16
LEAKAGE_PROMPT_MAX_LENGTH = 1000


class ClipSpec(SpecModel):
    """The CLIP model of the eval's quality metrics, fetched and SHA256-verified like the base model
    and cached on the volume. Off: no CLIP-T / CLIP-I (and no gate on them)."""

    enabled: bool = True
    url: str = CLIP_URL
    sha256: str = Field(CLIP_SHA256, pattern=r"^[0-9a-f]{64}$")
    path: Annotated[str, on_volume("eval.clip.path")] = CLIP_PATH
    config_url: str = CLIP_CONFIG_URL
    config_path: Annotated[str, on_volume("eval.clip.configPath")] = CLIP_CONFIG_PATH
    token_secret_ref: SecretKeyRef | None = None
    max_bytes: int = Field(CLIP_MAX_BYTES, ge=1, le=MAX_DOWNLOAD_BYTES)
    allow_insecure_http: bool = False
    # Training images CLIP-I compares with (evenly spread over the prepared dataset).
    max_training_images: int = Field(64, ge=1, le=1024)


class EvalGateSpec(SpecModel):
    """Thresholds the evaluated adapter must meet to stay deployed (``zthumb_contract.gate``): a
    failed check rolls the Deployment back to the previous adapter and fails the run with reason
    EvalGateFailed. No threshold set (the default): no gate, every run that evaluates stays rolled
    out. The metrics compare the served scale (spec.deploy.loraScale) with the reference scale (the
    first of spec.eval.scales, 0 by default)."""

    # CLIP-I: cosine similarity of the generated images to the training images (-1..1), so a gain
    # lies in -2..2; an adapter that learned its concept gains a few hundredths or more.
    min_clip_i_gain: float | None = Field(None, ge=-2, le=2)
    # CLIP-T: cosine similarity of each image to its prompt; a drop means the adapter overrides the
    # prompt. Same -2..2 range.
    max_clip_t_drop: float | None = Field(None, ge=-2, le=2)
    # Mean absolute pixel difference (0-255) against the reference scale: did the adapter change
    # anything at all (a cheap check that needs no CLIP model).
    min_mean_pixel_difference: float | None = Field(None, ge=0, le=255)
    # Leakage: 1 - the mean CLIP image similarity of eval.leakagePrompts (no trigger) rendered at
    # scale 0 and at the served scale, 0..2; a small adapter-induced change stays under ~0.1.
    max_leakage: float | None = Field(None, ge=0, le=2)
    # DINO: mean cosine similarity of the generated images' DINOv2 embeddings to the training
    # images' (-1..1), served scale minus reference, so -2..2; needs eval.dino.enabled.
    min_dino_gain: float | None = Field(None, ge=-2, le=2)
    # The LAION aesthetic score (about 1-10) at the reference scale minus the served scale's: how much
    # worse the adapter makes images look; needs eval.aesthetic.enabled.
    max_aesthetic_drop: float | None = Field(None, ge=-10, le=10)

    @property
    def active(self) -> bool:
        return any(value is not None for value in self.model_dump().values())


class EvalSpec(SpecModel):
    enabled: bool = True
    # At least one each, as the CRD's minItems say (an empty list cannot be written as flags).
    prompts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EVAL_PROMPTS), min_length=1, max_length=64
    )
    # The subject in new contexts, rendered like ``prompts`` (same seeds and scales) and reported
    # as a group of its own; a list beside ``prompts`` so that every spec written before stays valid
    # and means what it meant (``prompts`` is the in-distribution group). Empty: no such group.
    out_of_distribution_prompts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_OOD_PROMPTS), max_length=OOD_PROMPTS_MAX
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1, max_length=64)
    scales: list[float] = Field(default_factory=lambda: [0.0, 0.8], min_length=1, max_length=16)
    # Rendered without the trigger at scale 0 and the served scale, same seeds: how much the
    # adapter changes images it was not asked for (needs clip; an empty list turns it off).
    leakage_prompts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LEAKAGE_PROMPTS), max_length=LEAKAGE_PROMPTS_MAX
    )
    steps: int = Field(30, ge=1, le=150)
    width: int | None = Field(None, ge=64, le=2048, multiple_of=8)
    height: int | None = Field(None, ge=64, le=2048, multiple_of=8)
    # One CLI option holding JSON each (``--gate '{"minClipIGain": 0.02}'``), as training.validation.
    clip: ClipSpec = Field(default_factory=ClipSpec)
    dino: DinoSpec = Field(default_factory=DinoSpec)
    aesthetic: AestheticSpec = Field(default_factory=AestheticSpec)
    gate: EvalGateSpec = Field(default_factory=EvalGateSpec)

    @field_validator("leakage_prompts")
    @classmethod
    def _leakage_prompts_without_trigger(cls, prompts: list[str]) -> list[str]:
        for index, prompt in enumerate(prompts):
            field = f"eval.leakagePrompts[{index}]"
            if not prompt.strip() or len(prompt) > LEAKAGE_PROMPT_MAX_LENGTH:
                raise ValueError(f"{field}: a prompt of 1 to {LEAKAGE_PROMPT_MAX_LENGTH} characters")
            if TRIGGER_PLACEHOLDER in prompt:
                raise ValueError(
                    f"{field}: {TRIGGER_PLACEHOLDER} has no place here: leakage prompts measure what "
                    "the adapter does to prompts without its trigger"
                )
        return prompts

    @field_validator("out_of_distribution_prompts")
    @classmethod
    def _ood_prompts_bounded(cls, prompts: list[str]) -> list[str]:
        for index, prompt in enumerate(prompts):
            if not prompt.strip() or len(prompt) > LEAKAGE_PROMPT_MAX_LENGTH:
                field = f"eval.outOfDistributionPrompts[{index}]"
                raise ValueError(f"{field}: a prompt of 1 to {LEAKAGE_PROMPT_MAX_LENGTH} characters")
        return prompts
