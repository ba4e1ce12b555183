"""The eval's CLIP numbers (``spec.eval.clip``): fetch and verify the model, pick the training
images, score every sample and summarise per scale (``clip_metrics`` computes the similarities)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zthumb_contract.scale_sweep import CLIP_I, CLIP_T, IN_DISTRIBUTION

from zthumb_trainer.eval.clip_metrics import ClipError, ClipScorer, clip_scores, spread
from zthumb_trainer.eval.config import EvalConfig, Sample

if TYPE_CHECKING:
    import torch


def load_clip(config: EvalConfig) -> ClipScorer | None:
    """spec.eval.clip's model, fetched and verified on the volume first; None when it is off."""
    from zthumb_trainer.fetch.verified import FetchError, download, fetch_config, token_from_env

    if not config.clip.enabled or config.clip_model is None or config.clip_config is None:
        return None
    token, clip, field = token_from_env(), config.clip, "spec.eval.clip"
    try:
        download(clip.url, clip.sha256, config.clip_model, token=token, field=field, max_bytes=clip.max_bytes,
                 allow_insecure_http=clip.allow_insecure_http)  # fmt: skip
        fetch_config(
            clip.config_url, config.clip_config, token,
            required=("config.json", "preprocessor_config.json"), tokenizer_folders=("",), field=field,
            allow_insecure_http=clip.allow_insecure_http,
        )  # fmt: skip
        return ClipScorer(config.clip_model, config.clip_config)
    except FetchError as error:
        raise ClipError(f"spec.eval.clip: {error}") from error


def training_images(config: EvalConfig, most: int, metric: str = "CLIP-I") -> list[Any]:
    """At most ``most`` of the prepared dataset's images (the run dir beside the train summary),
    spread out; ``metric`` names what needs them in the error."""
    from PIL import Image

    from zthumb_trainer.dataset.prepare import DatasetError, load_manifest

    if config.train_summary is None:
        raise ClipError(
            f"{metric} needs the training images: pass --train-summary (the run dir's summary.json)"
        )
    try:
        dataset = load_manifest(config.train_summary.parent)
    except DatasetError as error:
        raise ClipError(f"{metric} needs the prepared dataset: {error}") from error
    entries = spread(dataset.entries, most)
    return [Image.open(dataset.directory / entry.image).convert("RGB") for entry in entries]


def served_key(config: EvalConfig) -> str:
    """The served scale as the per-scale blocks key it: the last compared scale when not given."""
    return f"{config.served_scale if config.served_scale is not None else config.scales[-1]:g}"


def per_scale(
    config: EvalConfig, samples: list[Sample], values: list[float], metric: str
) -> tuple[dict[str, dict[str, float]], float]:
    """``{scale: {metric: mean}}`` over the in-distribution samples (``spec.eval.prompts``, what the
    gate judges) of each scale (the shape of every metric's ``by_scale``), and the served scale's
    mean minus the reference's (the first scale). The other groups' values reach the sweep through
    each sample's ``scores``."""
    by_scale: dict[str, dict[str, float]] = {}
    for scale in config.scales:
        pairs = zip(samples, values, strict=True)
        picked = [value for s, value in pairs if s.scale == scale and s.group == IN_DISTRIBUTION]
        by_scale[f"{scale:g}"] = {metric: round(sum(picked) / len(picked), 4)}
    served, reference = by_scale[served_key(config)][metric], by_scale[f"{config.scales[0]:g}"][metric]
    return by_scale, round(served - reference, 4)


def clip_block(
    config: EvalConfig, scorer: Any, samples: list[Sample], embeddings: torch.Tensor | None = None
) -> dict[str, Any]:
    """The summary's ``clip`` block, of the in-distribution prompts (``spec.eval.prompts``, what the
    gate judges); every sample's CLIP-T and CLIP-I go into its ``scores`` (the sweep's, per group).
    ``embeddings``: the samples' CLIP image embeddings when already computed."""
    training = training_images(config, config.clip.max_training_images)
    images, prompts = [s.image for s in samples], [s.prompt for s in samples]
    clip_t, clip_i = clip_scores(scorer, images, prompts, training, embeddings)
    by_scale: dict[str, dict[str, float]] = {}
    for scale in config.scales:
        picked = [i for i, s in enumerate(samples) if s.scale == scale and s.group == IN_DISTRIBUTION]
        by_scale[f"{scale:g}"] = {
            "clip_t": round(sum(clip_t[i] for i in picked) / len(picked), 4),
            "clip_i": round(sum(clip_i[i] for i in picked) / len(picked), 4),
        }
    for sample, t, i in zip(samples, clip_t, clip_i, strict=True):
        sample.scores |= {CLIP_T: round(t, 4), CLIP_I: round(i, 4)}
    reference = f"{config.scales[0]:g}"
    served = served_key(config)
    return {
        "model": {"name": config.clip_model.name if config.clip_model else "", "url": config.clip.url,
                  "sha256": config.clip.sha256},
        "reference_scale": config.scales[0],
        "training_images": len(training),
        "by_scale": by_scale,
        "clip_i_gain": round(by_scale[served]["clip_i"] - by_scale[reference]["clip_i"], 4),
        "clip_t_drop": round(by_scale[reference]["clip_t"] - by_scale[served]["clip_t"], 4),
    }  # fmt: skip
