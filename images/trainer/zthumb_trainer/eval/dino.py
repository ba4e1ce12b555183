"""DINO, the DreamBooth paper's subject-fidelity metric (``spec.eval.dino``): the mean pairwise cosine
similarity of the DINO ViT embeddings of the generated images and the training images.

DINO is trained without captions, to tell images apart, so unlike CLIP-I it does not call two
different dogs similar because both are "a dog": it separates subjects of one class better. Here
with DINOv2 (transformers ``Dinov2Model``; the paper used DINO ViT-S/16): each image's embedding is
its CLS token after the final layer norm, L2-normalised; a generated image's score is the mean of
its cosines with every training image (spread over the prepared dataset, at most
``maxTrainingImages``), averaged per LoRA scale. ``dino_gain`` = the served scale's minus the
reference's (higher is better), which ``spec.eval.gate.minDinoGain`` bounds.

The model is loaded once per eval, after its weights and config are fetched and SHA256-verified
through the same fetcher as spec.eval.clip's, and runs on batches of ``BATCH`` images on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from zthumb_contract.eval_report import DinoBlock
from zthumb_contract.scale_sweep import DINO

from zthumb_trainer.eval.clip import per_scale, training_images
from zthumb_trainer.eval.clip_metrics import ClipError
from zthumb_trainer.eval.config import EvalConfig, Sample
from zthumb_trainer.eval.weights import build_scorer, embed_images

BATCH = 16
FIELD = "spec.eval.dino"


class DinoError(Exception):
    """The DINOv2 model cannot be used; the message names spec.eval.dino."""


class DinoScorer:
    """DINOv2 CLS embeddings, L2-normalised, on the CPU."""

    def __init__(self, weights: Path, config_dir: Path) -> None:
        from transformers import AutoImageProcessor, Dinov2Config, Dinov2Model

        parts = (Dinov2Config, AutoImageProcessor, Dinov2Model)
        self.processor, self.model = build_scorer(
            parts, config_dir, weights, name="DINOv2", field=FIELD, error=DinoError
        )

    def images(self, images: Sequence[Any]) -> torch.Tensor:
        def embed(pixel_values: torch.Tensor) -> torch.Tensor:
            # The CLS token, after the final layer norm.
            cls: torch.Tensor = self.model(pixel_values=pixel_values).last_hidden_state[:, 0]
            return cls

        return embed_images(self.processor, embed, images, BATCH)


def dino_similarities(scorer: DinoScorer, images: Sequence[Any], references: Sequence[Any]) -> list[float]:
    """Each image's mean DINO cosine similarity with the reference images (1 = identical)."""
    if not images or not references:
        counts = f"{len(images)} generated, {len(references)} training"
        raise DinoError(f"{FIELD}: DINO needs generated and training images ({counts})")
    similarity = scorer.images(images) @ scorer.images(references).T
    return [min(1.0, max(-1.0, float(value))) for value in similarity.mean(dim=1)]


def load_dino(config: EvalConfig) -> DinoScorer | None:
    """spec.eval.dino's model, fetched and verified on the volume first; None when it is off."""
    from zthumb_trainer.fetch.verified import FetchError, download, fetch_config

    dino = config.dino
    if not dino.enabled or config.dino_model is None or config.dino_config is None:
        return None
    try:
        # No token: public weights (the eval's HF_TOKEN is spec.eval.clip's, for its host only).
        download(dino.url, dino.sha256, config.dino_model, token=None, field=FIELD, max_bytes=dino.max_bytes,
                 allow_insecure_http=dino.allow_insecure_http)  # fmt: skip
        fetch_config(
            dino.config_url, config.dino_config, None, required=("config.json", "preprocessor_config.json"),
            tokenizer_folders=(), field=FIELD, allow_insecure_http=dino.allow_insecure_http,
        )  # fmt: skip
        return DinoScorer(config.dino_model, config.dino_config)
    except FetchError as error:
        raise DinoError(f"{FIELD}: {error}") from error


def dino_block(config: EvalConfig, scorer: DinoScorer, samples: list[Sample]) -> DinoBlock:
    """The report's ``dino`` block; each sample's DINO score goes into its ``scores`` (the sweep's,
    per group)."""
    try:
        training = training_images(config, config.dino.max_training_images, metric="DINO")
    except ClipError as error:  # the training images are read by clip.py for both metrics
        raise DinoError(f"{FIELD}: {error}") from error
    scores = dino_similarities(scorer, [s.image for s in samples], training)
    for sample, score in zip(samples, scores, strict=True):
        sample.scores[DINO] = round(score, 4)
    by_scale, gain = per_scale(config, samples, scores, DINO)
    return DinoBlock(
        model={"name": config.dino_model.name if config.dino_model else "", "url": config.dino.url,
               "sha256": config.dino.sha256},
        reference_scale=config.scales[0], training_images=len(training), by_scale=by_scale, dino_gain=gain,
    )  # fmt: skip
