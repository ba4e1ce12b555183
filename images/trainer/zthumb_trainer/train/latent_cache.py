"""VAE latent distributions and (with frozen text encoders) text embeddings, computed once per
dataset and base model into ``<run-dir>/cache/`` and reused across epochs and restarts."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from zthumb_trainer.atomic import staging_path
from zthumb_trainer.dataset.prepare import PreparedDataset
from zthumb_trainer.train.batches import load_pixels
from zthumb_trainer.train.components import Components, encode_text, tokenize
from zthumb_trainer.train.config import TrainConfig

# Bumped when the cache's content changes meaning, so old caches on a volume are not reused.
CACHE_VERSION = 1


def cache_key(dataset: PreparedDataset, config: TrainConfig) -> str:
    base = config.base_model_sha256 or _file_identity(config.base_model)
    material = json.dumps(
        [CACHE_VERSION, dataset.dataset_hash, base, config.train_text_encoder], sort_keys=True
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


@torch.no_grad()
def build_cache(
    components: Components, dataset: PreparedDataset, include_text: bool, device: Any
) -> dict[str, torch.Tensor]:
    """Latent distribution parameters (mean, logvar) per image, and text embeddings if frozen."""
    vae = components.vae
    cache: dict[str, torch.Tensor] = {}
    for index, entry in enumerate(dataset.entries):
        pixels = load_pixels(dataset, entry).unsqueeze(0).to(device, vae.dtype)
        # SDXL's VAE overflows in fp16; encoding happens once, so always in the VAE's own dtype (fp32).
        cache[f"latent_dist.{index}"] = vae.encode(pixels).latent_dist.parameters[0].float().cpu()
        if include_text:
            ids_1, ids_2 = tokenize(components, [entry.caption])
            embeds, pooled = encode_text(components, ids_1, ids_2)
            cache[f"prompt_embeds.{index}"] = embeds[0].float().cpu()
            cache[f"pooled.{index}"] = pooled[0].float().cpu()
    return cache


def load_or_build_cache(
    components: Components, dataset: PreparedDataset, config: TrainConfig, device: Any, is_main: bool
) -> tuple[dict[str, torch.Tensor], bool]:
    """The cache for this dataset + base model; ``True`` when it was read from the volume."""
    from safetensors.torch import load_file, save_file

    path = config.run_dir / "cache" / f"latents-{cache_key(dataset, config)}.safetensors"
    if path.exists():
        return load_file(str(path)), True
    cache = build_cache(components, dataset, include_text=not config.train_text_encoder, device=device)
    if is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = staging_path(path, "tmp")
        save_file(cache, str(temporary))
        os.replace(temporary, path)
    return cache, False
