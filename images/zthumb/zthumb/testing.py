"""Helpers for tests and benchmarks: random LoRA adapters for a (tiny) SDXL UNet, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]


def random_lora_state_dicts(unet_dir: Path, seeds: list[int], rank: int = 4) -> list[dict[str, Any]]:
    """PEFT-made LoRAs on the UNet in ``unet_dir`` with random (non-zero) weights, diffusers keys.

    The UNet is loaded once; each seed re-draws the adapter's weights.
    """
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(str(unet_dir), local_files_only=True)
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGET_MODULES, init_lora_weights=False)
    )
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


def random_lora_state_dict(unet_dir: Path, seed: int, rank: int = 4) -> dict[str, Any]:
    """One random LoRA (see ``random_lora_state_dicts``)."""
    return random_lora_state_dicts(unet_dir, [seed], rank)[0]


def write_diffusers_lora(state: dict[str, Any], directory: Path) -> Path:
    """A diffusers LoRA directory (``pytorch_lora_weights.safetensors``), like the trainer's export."""
    from diffusers import StableDiffusionXLPipeline

    directory.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(str(directory), unet_lora_layers=state)
    return directory


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
