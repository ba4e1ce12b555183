"""CLIP-T and CLIP-I, the quality numbers of the evaluation (as in the DreamBooth paper):

* CLIP-T: the cosine similarity of a generated image's CLIP embedding with its prompt's; an adapter
  that overrides the prompt lowers it.
* CLIP-I: the mean cosine similarity of a generated image's embedding with the embeddings of the
  training images; an adapter that learned its concept raises it over the base model's (scale 0).

Raw cosines in -1..1 (not CLIPScore's 100 x max(cos, 0)), averaged per LoRA scale; the eval
compares the served scale with the reference: ``clip_i_gain`` (higher is better) and
``clip_t_drop`` (lower is better), which is what ``spec.eval.gate`` bounds.

The model is a transformers ``CLIPModel``: its config, image processor and tokenizer from a
directory, its weights from one safetensors file (``spec.eval.clip``; both fetched and verified
by ``zthumb_trainer.fetch.verified`` first).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from zthumb_trainer.eval.weights import build_scorer, embed_images

BATCH = 16


class ClipError(Exception):
    """The CLIP model cannot be used; the message names spec.eval.clip."""


class ClipScorer:
    """CLIP image and text embeddings, L2-normalised, on the CPU (the eval step has no GPU)."""

    def __init__(self, weights: Path, config_dir: Path) -> None:
        from transformers import CLIPConfig, CLIPModel, CLIPProcessor

        parts = (CLIPConfig, CLIPProcessor, CLIPModel)
        self.processor, self.model = build_scorer(
            parts, config_dir, weights, name="CLIP", field="spec.eval.clip", error=ClipError
        )

    def images(self, images: Sequence[Any]) -> torch.Tensor:
        def embed(pixel_values: torch.Tensor) -> torch.Tensor:
            return _features(self.model.get_image_features(pixel_values=pixel_values))

        return embed_images(self.processor, embed, images, BATCH)

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        inputs = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
        features = self.model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        )
        return torch.nn.functional.normalize(_features(features), dim=-1)


def _features(output: Any) -> torch.Tensor:
    """transformers 5 may return a model output holding the projected embeddings."""
    if isinstance(output, torch.Tensor):
        return output
    pooled: torch.Tensor = output.pooler_output
    return pooled


def spread(items: Sequence[Any], most: int) -> list[Any]:
    """At most ``most`` of ``items``, evenly spaced (all of them when there are few)."""
    if len(items) <= most:
        return list(items)
    step = len(items) / most
    return [items[int(index * step)] for index in range(most)]


def clip_scores(
    scorer: ClipScorer,
    images: Sequence[Any],
    prompts: Sequence[str],
    training_images: Sequence[Any],
    image_embeddings: torch.Tensor | None = None,
) -> tuple[list[float], list[float]]:
    """(CLIP-T, CLIP-I) of each generated image: with its prompt, and averaged over the training
    images (``image_embeddings``: the images' own, when the caller already has them)."""
    if image_embeddings is None:
        image_embeddings = scorer.images(images)
    unique = list(dict.fromkeys(prompts))
    text_embeddings = scorer.texts(unique)
    by_prompt = {prompt: text_embeddings[index] for index, prompt in enumerate(unique)}
    clip_t = [float(image_embeddings[i] @ by_prompt[prompt]) for i, prompt in enumerate(prompts)]
    training = scorer.images(training_images)
    clip_i = (image_embeddings @ training.T).mean(dim=1).tolist()
    return clip_t, [float(value) for value in clip_i]
