"""Load one safetensors file into a model built from its config, tensor by tensor: what the eval's
scoring models (CLIP, DINOv2, the aesthetic head) share. Never a pickle. The two transformers
models also share how they are built (``build_scorer``) and how images are embedded in batches
(``embed_images``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


class WeightsError(Exception):
    """The file is not the model's weights; the caller adds which spec field named it."""


def load_into(model: torch.nn.Module, weights: Path, what: str) -> None:
    """Copy ``weights`` into ``model``'s own storage (a ViT-L is 1.7 GB in fp32, and the eval pod's
    4 GiB would not hold a second full copy as a state dict); every tensor of the model must be
    there with its shape. ``what`` names the model in the error ("the CLIP model of <dir>")."""
    from safetensors import SafetensorError

    own = model.state_dict()
    try:
        _copy(own, weights, what)
    except SafetensorError as error:
        raise WeightsError(f"{weights} is not a safetensors file: {error}") from error


def _copy(own: dict[str, torch.Tensor], weights: Path, what: str) -> None:
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as file, torch.no_grad():
        names = set(file.keys())
        # position_ids are buffers that older checkpoints carry and newer models rebuild.
        missing = [key for key in own if key not in names and not key.endswith("position_ids")]
        if missing:
            raise WeightsError(
                f"{weights} is not {what} ({len(missing)} tensors missing, e.g. {missing[:3]})"
            )
        for name in names & own.keys():
            tensor = file.get_tensor(name)
            if tensor.shape != own[name].shape:
                shapes = f"{tuple(tensor.shape)} vs {tuple(own[name].shape)}"
                raise WeightsError(f"{weights} does not fit {what} ({name}: {shapes})")
            own[name].copy_(tensor)


def build_scorer(
    parts: tuple[Any, Any, Any],
    config_dir: Path,
    weights: Path,
    *,
    name: str,
    field: str,
    error: type[Exception],
) -> tuple[Any, Any]:
    """(processor, model) from ``parts`` = the transformers (config, processor, model) classes: the
    config and processor from ``config_dir``, the weights from ``weights``. A failure raises
    ``error`` with a message that starts with ``field`` (the spec field that named the files)."""
    config_class, processor_class, model_class = parts
    try:
        config = config_class.from_pretrained(config_dir)
        processor = processor_class.from_pretrained(config_dir)
    except (OSError, ValueError) as exc:
        raise error(f"{field}: no {name} config in {config_dir}: {exc}") from exc
    model = model_class(config).eval()
    try:
        load_into(model, weights, f"the {name} model of {config_dir}")
    except WeightsError as exc:
        raise error(f"{field}: {exc}") from exc
    return processor, model


@torch.no_grad()
def embed_images(
    processor: Any, embed: Callable[[torch.Tensor], torch.Tensor], images: Sequence[Any], batch: int
) -> torch.Tensor:
    """``embed(pixel_values)`` of ``images``, ``batch`` at a time, L2-normalised."""
    chunks = []
    for start in range(0, len(images), batch):
        inputs = processor(images=list(images[start : start + batch]), return_tensors="pt")
        chunks.append(embed(inputs["pixel_values"]))
    return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)
