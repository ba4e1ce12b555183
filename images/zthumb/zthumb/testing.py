"""Helpers for tests and benchmarks: random LoRA adapters for a (tiny) SDXL UNet, offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]


def lora_config(rank: int = 4, alpha: int | None = None, target_modules: list[str] | None = None) -> Any:
    """The PEFT ``LoraConfig`` of the test adapters (``alpha`` defaults to ``rank``: scale 1)."""
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        target_modules=target_modules or TARGET_MODULES,
        init_lora_weights=False,
    )


def adapter_metadata(config: Any) -> dict[str, Any]:
    """A ``LoraConfig`` as the plain-JSON adapter metadata ``save_lora_weights`` writes to the header.

    PEFT config dicts hold sets and enums; like the trainer's export, sets become sorted lists.
    """
    return json.loads(
        json.dumps(
            config.to_dict(), default=lambda value: sorted(value) if isinstance(value, set) else str(value)
        )
    )


def random_lora_state_dicts(
    unet_dir: Path,
    seeds: list[int],
    rank: int = 4,
    alpha: int | None = None,
    target_modules: list[str] | None = None,
) -> list[dict[str, Any]]:
    """PEFT-made LoRAs on the UNet in ``unet_dir`` with random (non-zero) weights, diffusers keys.

    The UNet is loaded once; each seed re-draws the adapter's weights. The state dict does not
    hold ``alpha``: a file written from it needs ``adapter_metadata(lora_config(rank, alpha))``
    for an alpha other than the rank to apply.
    """
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(str(unet_dir), local_files_only=True)
    unet.add_adapter(lora_config(rank, alpha, target_modules))
    states = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # large enough to see at 2 denoising steps of the tiny model
            for name, param in unet.named_parameters():
                if "lora_A" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) / param.shape[1] ** 0.5)
                elif "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        states.append({key: value.detach().clone().contiguous() for key, value in state.items()})
    return states


def random_lora_state_dict(
    unet_dir: Path, seed: int, rank: int = 4, alpha: int | None = None
) -> dict[str, Any]:
    """One random LoRA (see ``random_lora_state_dicts``)."""
    return random_lora_state_dicts(unet_dir, [seed], rank, alpha)[0]


def write_diffusers_lora(
    state: dict[str, Any], directory: Path, metadata: dict[str, Any] | None = None
) -> Path:
    """A diffusers LoRA directory (``pytorch_lora_weights.safetensors``), like the trainer's export.

    ``metadata`` (see ``adapter_metadata``) goes into the safetensors header as the UNet's
    ``lora_adapter_metadata``.
    """
    from diffusers import StableDiffusionXLPipeline

    directory.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(
        str(directory), unet_lora_layers=state, unet_lora_adapter_metadata=metadata
    )
    return directory


def write_random_adapters(
    unet_dir: Path, root: Path, names: list[str], first_seed: int, rank: int
) -> list[str]:
    """One random diffusers LoRA directory per name under ``root`` (seeds from ``first_seed`` on)."""
    seeds = [first_seed + index for index in range(len(names))]
    for name, state in zip(names, random_lora_state_dicts(unet_dir, seeds, rank=rank), strict=True):
        write_diffusers_lora(state, root / name)
    return names


def write_kohya_lora(state: dict[str, Any], file: Path) -> Path:
    """The same adapter in the kohya/A1111 layout (``lora_unet_…lora_down/lora_up`` + ``alpha``)."""
    import torch
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya, convert_unet_state_dict_to_peft
    from safetensors.torch import save_file

    peft_state = convert_unet_state_dict_to_peft(state)
    kohya = convert_state_dict_to_kohya({f"unet.{key}": value for key, value in peft_state.items()})
    # alpha = rank: scale 1, like the PEFT original.
    kohya = {
        key: value.contiguous() if isinstance(value, torch.Tensor) else value for key, value in kohya.items()
    }
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file(kohya, str(file))
    return file
