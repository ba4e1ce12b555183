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

from zthumb_trainer.eval.weights import WeightsError, load_into

BATCH = 16


class ClipError(Exception):
    """The CLIP model cannot be used; the message names spec.eval.clip."""


class ClipScorer:
    """CLIP image and text embeddings, L2-normalised, on the CPU (the eval step has no GPU)."""

    def __init__(self, weights: Path, config_dir: Path) -> None:
        from transformers import CLIPConfig, CLIPModel, CLIPProcessor

        try:
            config = CLIPConfig.from_pretrained(config_dir)
            self.processor = CLIPProcessor.from_pretrained(config_dir)
        except (OSError, ValueError) as error:
            raise ClipError(f"spec.eval.clip: no CLIP config in {config_dir}: {error}") from error
        self.model = CLIPModel(config).eval()
        try:
            load_into(self.model, weights, f"the CLIP model of {config_dir}")
        except WeightsError as error:
            raise ClipError(f"spec.eval.clip: {error}") from error

    @torch.no_grad()
    def images(self, images: Sequence[Any]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(images), BATCH):
            inputs = self.processor(images=list(images[start : start + BATCH]), return_tensors="pt")
            chunks.append(_features(self.model.get_image_features(pixel_values=inputs["pixel_values"])))
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)

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
