"""The eval's CLIP numbers (``spec.eval.clip``): fetch and verify the model, pick the training
images, score every sample and summarise per scale (``clip_metrics`` computes the similarities)."""

from __future__ import annotations

from typing import Any

from zthumb_contract.scale_sweep import CLIP_I, CLIP_T, IN_DISTRIBUTION

from zthumb_trainer.eval.clip_metrics import ClipError, ClipScorer, clip_scores, spread
from zthumb_trainer.eval.config import EvalConfig, Sample


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


def training_images(config: EvalConfig) -> list[Any]:
    """The prepared dataset's images (the run dir beside the train summary), spread out."""
    from PIL import Image

    from zthumb_trainer.dataset.prepare import DatasetError, load_manifest

    if config.train_summary is None:
        raise ClipError("CLIP-I needs the training images: pass --train-summary (the run dir's summary.json)")
    try:
        dataset = load_manifest(config.train_summary.parent)
    except DatasetError as error:
        raise ClipError(f"CLIP-I needs the prepared dataset: {error}") from error
    entries = spread(dataset.entries, config.clip.max_training_images)
    return [Image.open(dataset.directory / entry.image).convert("RGB") for entry in entries]


def clip_block(config: EvalConfig, scorer: Any, samples: list[Sample]) -> dict[str, Any]:
    """The summary's ``clip`` block, of the in-distribution prompts (``spec.eval.prompts``, what the
    gate judges); every sample's CLIP-T and CLIP-I go into its ``scores`` (the sweep's, per group)."""
    training = training_images(config)
    clip_t, clip_i = clip_scores(scorer, [s.image for s in samples], [s.prompt for s in samples], training)
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
    served = f"{config.served_scale if config.served_scale is not None else config.scales[-1]:g}"
    return {
        "model": {"name": config.clip_model.name if config.clip_model else "", "url": config.clip.url,
                  "sha256": config.clip.sha256},
        "reference_scale": config.scales[0],
        "training_images": len(training),
        "by_scale": by_scale,
        "clip_i_gain": round(by_scale[served]["clip_i"] - by_scale[reference]["clip_i"], 4),
        "clip_t_drop": round(by_scale[reference]["clip_t"] - by_scale[served]["clip_t"], 4),
    }  # fmt: skip
