"""Load one safetensors file into a model built from its config, tensor by tensor: what the eval's
scoring models (CLIP, DINOv2, the aesthetic head) share. Never a pickle."""

from __future__ import annotations

from pathlib import Path

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
