"""The aesthetic score (``spec.eval.aesthetic``): the LAION aesthetic predictor, an MLP head that
maps a CLIP ViT-L/14 image embedding (L2-normalised) to a rating of about 1-10 learned from human
ratings (SAC, LAION-Logos, AVA). It reuses the CLIP image embeddings the eval already computes for
CLIP-I, so it costs one small MLP, not a second image model.

Its published weights are a pickled state dict, which this never unpickles: the head is read from
a safetensors file with the same tensor names (``layers.0.weight`` ... ``layers.7.bias``; the
conversion is in images/trainer/README.md), fetched and SHA256-verified like the CLIP model. The
architecture is fixed; only the input width follows the file, and it must be the CLIP model's
embedding width. ``aesthetic_drop`` = the reference scale's mean score minus the served scale's
(positive: the adapter makes images look worse), which ``spec.eval.gate.maxAestheticDrop`` bounds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from zthumb_contract.eval_report import AestheticBlock
from zthumb_contract.scale_sweep import AESTHETIC

from zthumb_trainer.eval.clip import per_scale
from zthumb_trainer.eval.config import EvalConfig, Sample
from zthumb_trainer.eval.weights import WeightsError, load_into

FIELD = "spec.eval.aesthetic"
# The LAION head's hidden widths and dropouts (improved-aesthetic-predictor's MLP); the dropouts
# keep the layer indices (and so the tensor names) of the published state dict.
HIDDEN = (1024, 128, 64, 16)
DROPOUTS = (0.2, 0.2, 0.1)


class AestheticError(Exception):
    """The aesthetic head cannot be used; the message names spec.eval.aesthetic."""


class AestheticHead(torch.nn.Module):
    """LAION's MLP: Linear(d, 1024), Dropout, Linear(1024, 128), Dropout, Linear(128, 64), Dropout,
    Linear(64, 16), Linear(16, 1); no activations, as published."""

    def __init__(self, input_width: int) -> None:
        super().__init__()
        widths = (input_width, *HIDDEN)
        layers: list[torch.nn.Module] = []
        for index in range(len(HIDDEN)):
            layers.append(torch.nn.Linear(widths[index], widths[index + 1]))
            if index < len(DROPOUTS):
                layers.append(torch.nn.Dropout(DROPOUTS[index]))
        layers.append(torch.nn.Linear(HIDDEN[-1], 1))
        self.layers = torch.nn.Sequential(*layers)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)


def load_head(weights: Path, embedding_width: int) -> AestheticHead:
    """The head in ``weights``, which must take ``embedding_width``-wide embeddings (the CLIP's)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as file:
            first = "layers.0.weight"
            shape = file.get_slice(first).get_shape() if first in file.keys() else None  # noqa: SIM118
    except (OSError, SafetensorError) as error:
        raise AestheticError(f"{FIELD}: {weights} is not a safetensors file: {error}") from error
    if shape is None or len(shape) != 2:  # a Linear's weight
        raise AestheticError(f"{FIELD}: {weights} is not the LAION aesthetic head (no 2-D layers.0.weight)")
    if shape[1] != embedding_width:
        raise AestheticError(
            f"{FIELD}: the head takes {shape[1]}-wide embeddings, spec.eval.clip's model gives "
            f"{embedding_width} (the LAION head for ViT-L/14 takes 768)"
        )
    head = AestheticHead(embedding_width).eval()
    try:
        load_into(head, weights, "the LAION aesthetic head")
    except WeightsError as error:
        raise AestheticError(f"{FIELD}: {error}") from error
    return head


def load_aesthetic(config: EvalConfig, embedding_width: int) -> AestheticHead | None:
    """spec.eval.aesthetic's head, fetched and verified on the volume first; None when it is off."""
    from zthumb_trainer.fetch.verified import FetchError, download

    spec = config.aesthetic
    if not spec.enabled or config.aesthetic_model is None or spec.url is None or spec.sha256 is None:
        return None
    try:
        # No token: the converted head is the user's own file on a public or in-cluster URL.
        download(spec.url, spec.sha256, config.aesthetic_model, token=None, field=FIELD,
                 max_bytes=spec.max_bytes, allow_insecure_http=spec.allow_insecure_http)  # fmt: skip
    except FetchError as error:
        raise AestheticError(f"{FIELD}: {error}") from error
    return load_head(config.aesthetic_model, embedding_width)


@torch.no_grad()
def aesthetic_scores(head: AestheticHead, embeddings: torch.Tensor) -> list[float]:
    """One score per L2-normalised CLIP image embedding, in one batch."""
    return [float(value) for value in head(embeddings.to(torch.float32))]


def aesthetic_block(
    config: EvalConfig, head: AestheticHead, samples: list[Sample], embeddings: torch.Tensor
) -> AestheticBlock:
    """The report's ``aesthetic`` block from the samples' CLIP image embeddings; each sample's score
    goes into its ``scores`` (the sweep's, per group)."""
    scores = aesthetic_scores(head, embeddings)
    for sample, score in zip(samples, scores, strict=True):
        sample.scores[AESTHETIC] = round(score, 4)
    by_scale, gain = per_scale(config, samples, scores, AESTHETIC)
    return AestheticBlock(
        model={"name": config.aesthetic_model.name if config.aesthetic_model else "",
               "url": config.aesthetic.url, "sha256": config.aesthetic.sha256},
        reference_scale=config.scales[0], by_scale=by_scale, aesthetic_drop=round(-gain, 4),
    )  # fmt: skip


def save_random_head(path: Path, input_width: int, seed: int = 0) -> Path:
    """A random head of the LAION architecture for ``input_width``-wide embeddings, as the safetensors
    file ``load_head`` reads: the demo's and the tests' tiny scorer (its scores mean nothing)."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    head = AestheticHead(input_width)
    save_file({name: tensor.contiguous() for name, tensor in head.state_dict().items()}, str(path))
    return path
