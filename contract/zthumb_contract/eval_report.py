"""The eval's ``summary.json`` (``EvalReport``): written by the eval step, read by the server's
report pages and by the local runner, and the source of the compact ``EvalSummary`` that goes to
the operator (``status.evalSummary``).

On disk the keys stay snake_case, as every version wrote them, so a server shows reports written
before this model and an older server shows newer ones; the models accept camelCase too (the
aliases of ``Results``). A value that fails validation (NaN, a wrong type) is dropped on its own
by ``EvalReport.from_report``; the page then shows it as missing.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, computed_field, field_validator

from zthumb_contract.results import EvalSummary, Results, TrainResults
from zthumb_contract.scale_sweep import IN_DISTRIBUTION, ByScale, ScaleSweep


class EvalPair(Results):
    """One prompt × seed rendered at every scale: ``image`` is the side-by-side picture."""

    prompt: str
    seed: int
    image: str
    group: str = IN_DISTRIBUTION  # zthumb_contract.scale_sweep.PROMPT_GROUPS; older reports had one
    mean_pixel_difference: ByScale = Field(default_factory=dict)
    latency_s: ByScale = Field(default_factory=dict)
    clip_t: ByScale | None = None
    clip_i: ByScale | None = None
    dino: ByScale | None = None
    aesthetic: ByScale | None = None


class ClipBlock(Results):
    """CLIP-T and CLIP-I per scale, and the served scale against the reference."""

    model: dict[str, Any] = Field(default_factory=dict)  # the CLIP model's name, url, sha256
    reference_scale: float = 0.0
    training_images: int = 0
    by_scale: dict[str, ByScale] = Field(default_factory=dict)
    clip_i_gain: float = Field(allow_inf_nan=False)
    clip_t_drop: float = Field(allow_inf_nan=False)


class DinoBlock(Results):
    """DINO similarity to the training images per scale (``by_scale[scale]["dino"]``, as CLIP's
    blocks), and the served scale against the reference."""

    model: dict[str, Any] = Field(default_factory=dict)  # the DINOv2 model's name, url, sha256
    reference_scale: float = 0.0
    training_images: int = 0
    by_scale: dict[str, ByScale] = Field(default_factory=dict)
    dino_gain: float = Field(allow_inf_nan=False)


class AestheticBlock(Results):
    """The LAION aesthetic score per scale (``by_scale[scale]["aesthetic"]``), and how much lower the
    served scale scores than the reference."""

    model: dict[str, Any] = Field(default_factory=dict)  # the head's name, url, sha256
    reference_scale: float = 0.0
    by_scale: dict[str, ByScale] = Field(default_factory=dict)
    aesthetic_drop: float = Field(allow_inf_nan=False)


class LeakagePrompt(Results):
    """One prompt without the trigger, at scale 0 and at the served scale, over the eval's seeds."""

    prompt: str
    similarity: float = Field(ge=-1, le=1, allow_inf_nan=False)  # mean CLIP image cosine, 1 = same
    leakage: float = Field(ge=0, le=2, allow_inf_nan=False)  # 1 - similarity
    images: list[str] = Field(default_factory=list)  # side by side, one per seed


class LeakageBlock(Results):
    """How far the adapter moves images it was not asked for (``spec.eval.leakagePrompts``)."""

    scale: float  # the served scale, compared with scale 0
    seeds: list[int] = Field(default_factory=list)
    leakage: float = Field(ge=0, le=2, allow_inf_nan=False)  # 1 - mean similarity over all pairs
    prompts: list[LeakagePrompt] = Field(default_factory=list)


# The held-out loss is "rising" when its last pass is more than this fraction above the lowest pass
# before it: noise between passes at fixed timesteps and seeded noise is far below 5 %, while an
# adapter that memorises its training images drifts well past it.
HOLDOUT_RISE_FRACTION = 0.05


class HoldoutTrend(Results):
    """The held-out loss over the passes of the train step (``spec.dataset.holdout``)."""

    passes: int = Field(ge=1)
    min_step: int
    min_loss: float = Field(allow_inf_nan=False)
    last_step: int
    last_loss: float = Field(allow_inf_nan=False)
    rising: bool  # last_loss > min_loss * (1 + HOLDOUT_RISE_FRACTION), the minimum before the last

    @computed_field  # type: ignore[prop-decorator]
    @property
    def rise_percent(self) -> float | None:
        """How far the last pass is above the lowest, in percent (None when the lowest is 0:
        no finite ratio). Dumped with the model, so the report page reads the same number."""
        return (self.last_loss / self.min_loss - 1) * 100 if self.min_loss > 0 else None

    @classmethod
    def of(cls, steps: list[int], losses: list[float]) -> HoldoutTrend:
        """The trend of passes in step order (at least one)."""
        lowest = min(range(len(losses)), key=lambda index: (losses[index], steps[index]))
        last = len(losses) - 1
        rising = lowest < last and losses[last] > losses[lowest] * (1 + HOLDOUT_RISE_FRACTION)
        return cls(
            passes=len(losses),
            min_step=steps[lowest],
            min_loss=losses[lowest],
            last_step=steps[last],
            last_loss=losses[last],
            rising=rising,
        )


class CurvesBlock(Results):
    """The training curves drawn by the eval step: each image path (relative to the report) is
    there only when that image was written."""

    loss: str | None = None  # the loss, raw and smoothed, over the steps
    learning_rate: str | None = None
    validation_strip: str | None = None  # the validation grids side by side, in step order
    logged_steps: int | None = Field(None, ge=0)  # the steps of the train step's progress log
    points: int | None = Field(None, ge=0)  # the points drawn (a long log is averaged down)
    first_step: int | None = None
    last_step: int | None = None
    strip_steps: list[int] = Field(default_factory=list)
    holdout: HoldoutTrend | None = None  # the held-out loss, drawn on the loss curve too

    def images(self) -> list[str]:
        return [path for path in (self.loss, self.learning_rate, self.validation_strip) if path]


# At most this many generated captions are shown (the prepare step samples 8), each bounded: the
# report page reads what a pod wrote.
CAPTION_SAMPLES_MAX = 16
CAPTION_MAX_LENGTH = 2000


class CaptionSample(Results):
    source: str = Field(max_length=1024)  # the image's path in the dataset
    caption: str = Field(max_length=CAPTION_MAX_LENGTH)  # as trained on, trigger word first


class CaptioningBlock(Results):
    """The captions a model wrote in the prepare step (``spec.dataset.captioning``), from the
    prepared dataset's ``stats.json``: how many, with which model, and a sample of them."""

    model: dict[str, Any] = Field(default_factory=dict)  # the weights' url, sha256 and file name
    mode: str = ""
    generated: int = Field(0, ge=0)
    samples: list[CaptionSample] = Field(default_factory=list, max_length=CAPTION_SAMPLES_MAX)


class EvalReport(Results):
    run_name: str = ""
    server_url: str = ""
    lora_path: str = ""
    reference_scale: float = 0.0
    scales: list[float] = Field(default_factory=list)
    served_scale: float | None = None
    requests: int = 0
    mean_pixel_difference: float | None = Field(None, allow_inf_nan=False)
    min_pixel_difference: float | None = Field(None, allow_inf_nan=False)
    mean_latency_s: float | None = Field(None, allow_inf_nan=False)
    seconds: float | None = Field(None, allow_inf_nan=False)
    adapter: dict[str, Any] | None = None  # the server's adapter block: path, sha256, scale
    backend: str | None = None
    image_size: list[int | None] = Field(default_factory=lambda: list[int | None]([None, None]))
    steps: int | None = None
    base_model: dict[str, Any] | None = None  # the server's /models entry: name, model, device, dtype
    # The train step's own block, kept in its status shape (camelCase, as TrainResults writes it).
    training: dict[str, Any] | None = None
    clip: ClipBlock | None = None
    leakage: LeakageBlock | None = None
    dino: DinoBlock | None = None
    aesthetic: AestheticBlock | None = None
    pairs: list[EvalPair] = Field(default_factory=list)
    validation: dict[str, Any] | None = None  # the train step's validation grids (train.validation)
    curves: CurvesBlock | None = None  # drawn from the train step's progress log and grids
    captioning: CaptioningBlock | None = None  # the prepare step's generated captions, if any
    sweep: ScaleSweep | None = None  # every metric per group and scale, the recommended scale
    gate: dict[str, Any] | None = None  # GateVerdict.status() of spec.eval.gate
    # The report's upload to the train step's MLflow run (spec.training.tracking): its warning, if any.
    tracking: dict[str, Any] | None = None

    @field_validator("training", mode="before")
    @classmethod
    def _training_results(cls, block: object) -> dict[str, Any] | None:
        results = TrainResults.from_report(block)
        return results.status() if results is not None else None

    def to_json(self) -> str:
        """``summary.json``'s text: snake_case keys, as older readers expect."""
        return self.model_dump_json(indent=2) + "\n"

    def summary(self) -> EvalSummary:
        """The compact numbers for ``status.evalSummary`` (the eval pod's termination message)."""
        sha256 = (self.adapter or {}).get("sha256")
        return (
            EvalSummary.from_report(
                {
                    "requests": self.requests,
                    "mean_pixel_difference": self.mean_pixel_difference,
                    "min_pixel_difference": self.min_pixel_difference,
                    "mean_latency_seconds": self.mean_latency_s,
                    "seconds": self.seconds,
                    "served_scale": self.served_scale,
                    "clip_i_gain": self.clip.clip_i_gain if self.clip else None,
                    "clip_t_drop": self.clip.clip_t_drop if self.clip else None,
                    "leakage": self.leakage.leakage if self.leakage else None,
                    "dino_gain": self.dino.dino_gain if self.dino else None,
                    "aesthetic_drop": self.aesthetic.aesthetic_drop if self.aesthetic else None,
                    "adapter_sha256": sha256,
                    "recommended_scale": self.sweep.recommended_scale if self.sweep else None,
                }
            )
            or EvalSummary()
        )
