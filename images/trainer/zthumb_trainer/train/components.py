"""The SDXL parts a training run needs, loaded from a single-file checkpoint or a diffusers directory,
and SDXL's text conditioning (both encoders' penultimate states, the second's pooled output)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class Components:
    unet: Any
    vae: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    tokenizer_2: Any
    noise_scheduler: Any


def load_components(base_model: Path, model_config: Path | None) -> Components:
    """Load SDXL from a single-file checkpoint (+ offline configs) or a diffusers directory."""
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline

    if base_model.is_dir():
        pipe = StableDiffusionXLPipeline.from_pretrained(str(base_model), local_files_only=True)
    else:
        if model_config is None or not model_config.is_dir():
            raise FileNotFoundError(
                f"{base_model} is a single-file checkpoint; its diffusers config directory "
                f"({model_config}) is missing: run fetch-model with --config-dir first"
            )
        pipe = StableDiffusionXLPipeline.from_single_file(
            str(base_model), config=str(model_config), local_files_only=True
        )
    return Components(
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        text_encoder_2=pipe.text_encoder_2,
        tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2,
        # Training samples noise with the DDPM schedule the base model was trained on.
        noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
    )


def tokenize(components: Components, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    def ids(tokenizer: Any) -> torch.Tensor:
        return tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    return ids(components.tokenizer), ids(components.tokenizer_2)


def encode_text(
    components: Components, ids_1: torch.Tensor, ids_2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL conditioning: penultimate hidden states of both encoders, pooled output of the second."""
    embeds = []
    pooled = None
    for encoder, ids in ((components.text_encoder, ids_1), (components.text_encoder_2, ids_2)):
        output = encoder(ids.to(encoder.device), output_hidden_states=True, return_dict=True)
        if encoder is components.text_encoder_2:
            pooled = output.text_embeds if hasattr(output, "text_embeds") else output[0]
        embeds.append(output.hidden_states[-2])
    assert pooled is not None
    return torch.cat(embeds, dim=-1), pooled
