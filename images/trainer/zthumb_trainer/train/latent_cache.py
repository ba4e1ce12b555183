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

# Bumped when the cache's content changes meaning, so old caches on a volume are not reused
# (2: the empty caption's embeddings, for captionDropout; flipped latents with randomFlip).
CACHE_VERSION = 2
# The text-embedding entries of the empty caption (captionDropout), beside those of each image.
EMPTY_CAPTION = "empty"


def latent_key(index: int, flipped: bool = False) -> str:
    """A flipped sample's latents are the VAE's encoding of the flipped image, not the flipped
    latents of the image: the VAE is not exactly mirror-symmetric."""
    return f"latent_dist{'_flipped' if flipped else ''}.{index}"


def text_keys(index: int | str) -> tuple[str, str]:
    """(prompt embeddings, pooled embedding) of image ``index``, or of ``EMPTY_CAPTION``."""
    return f"prompt_embeds.{index}", f"pooled.{index}"


def cache_key(dataset: PreparedDataset, config: TrainConfig) -> str:
    base = config.base_model_sha256 or _file_identity(config.base_model)
    material = json.dumps(
        [CACHE_VERSION, dataset.dataset_hash, base, config.train_text_encoder, config.random_flip],
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


@torch.no_grad()
def build_cache(
    components: Components, dataset: PreparedDataset, include_text: bool, device: Any, flipped: bool = False
) -> dict[str, torch.Tensor]:
    """Latent distribution parameters (mean, logvar) per image (and per flipped image with
    ``flipped``), and text embeddings (each caption's and the empty one's) if frozen."""
    vae = components.vae
    cache: dict[str, torch.Tensor] = {}
    for index, entry in enumerate(dataset.entries):
        pixels = load_pixels(dataset, entry).unsqueeze(0).to(device, vae.dtype)
        # SDXL's VAE overflows in fp16; encoding happens once, so always in the VAE's own dtype (fp32).
        cache[latent_key(index)] = vae.encode(pixels).latent_dist.parameters[0].float().cpu()
        if flipped:
            mirrored = pixels.flip(-1)
            cache[latent_key(index, True)] = vae.encode(mirrored).latent_dist.parameters[0].float().cpu()
        if include_text:
            _encode_caption(components, entry.caption, cache, index)
    if include_text:
        _encode_caption(components, "", cache, EMPTY_CAPTION)
    return cache


def _encode_caption(
    components: Components, caption: str, cache: dict[str, torch.Tensor], index: int | str
) -> None:
    ids_1, ids_2 = tokenize(components, [caption])
    embeds, pooled = encode_text(components, ids_1, ids_2)
    embeds_key, pooled_key = text_keys(index)
    cache[embeds_key] = embeds[0].float().cpu()
    cache[pooled_key] = pooled[0].float().cpu()


def load_or_build_cache(
    components: Components, dataset: PreparedDataset, config: TrainConfig, device: Any, is_main: bool
) -> tuple[dict[str, torch.Tensor], bool]:
    """The cache for this dataset + base model; ``True`` when it was read from the volume."""
    from safetensors.torch import load_file, save_file

    path = config.run_dir / "cache" / f"latents-{cache_key(dataset, config)}.safetensors"
    if path.exists():
        return load_file(str(path)), True
    cache = build_cache(
        components,
        dataset,
        include_text=not config.train_text_encoder,
        device=device,
        flipped=config.random_flip,
    )
    if is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = staging_path(path, "tmp")
        save_file(cache, str(temporary))
        os.replace(temporary, path)
    return cache, False
