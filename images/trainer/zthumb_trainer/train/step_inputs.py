"""The inputs of one training micro-batch: latents, text conditioning and the noise, drawn so that a
resumed or multi-process run sees exactly what one uninterrupted process would.

One noise generator state on every rank: each draws the global batch's noise and keeps its own
rows, so N processes draw what one process with the global batch draws (and any rank's state
resumes them all). Latent distributions and text embeddings come from the cache when it is on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from zthumb_trainer.dataset.masks import latent_mask
from zthumb_trainer.dataset.prepare import PreparedDataset
from zthumb_trainer.train.augment import SampleChoice, sample_choices
from zthumb_trainer.train.batches import load_pixels, time_ids
from zthumb_trainer.train.components import encode_text, tokenize
from zthumb_trainer.train.latent_cache import EMPTY_CAPTION, latent_key, text_keys
from zthumb_trainer.train.model_setup import to_device


@dataclass
class MicroBatch:
    latents: torch.Tensor
    embeds: torch.Tensor
    pooled: torch.Tensor
    add_time_ids: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    # The loss masks at the latents' resolution (B x 1 x H x W); None when no sample has one.
    loss_weights: torch.Tensor | None = None


class StepInputs:
    def __init__(
        self,
        components: Any,
        dataset: PreparedDataset,
        cache: dict[str, torch.Tensor],
        *,
        device: torch.device,
        seed: int,
        world_size: int,
        cache_latents: bool,
        train_text_encoder: bool,
        noise_offset: float,
        caption_dropout: float = 0.0,
        random_flip: bool = False,
    ) -> None:
        self.components, self.dataset, self.cache, self.device = components, dataset, cache, device
        self.distributed = world_size > 1
        self.cache_latents, self.train_text_encoder = cache_latents, train_text_encoder
        self.noise_offset = noise_offset
        self.seed, self.caption_dropout, self.random_flip = seed, caption_dropout, random_flip
        # Saved in and restored from every checkpoint.
        self.noise_generator = torch.Generator(device=device).manual_seed(seed)

    def draw(
        self, shape: tuple[int, ...], rows: list[int], size: int, integers: int | None = None
    ) -> torch.Tensor:
        """Noise for this rank's rows of a global batch of ``size`` (shape: this rank's)."""
        full = (size, *shape[1:]) if self.distributed else shape
        if integers is None:
            values = torch.randn(full, generator=self.noise_generator, device=self.device)
        else:
            values = torch.randint(0, integers, full, generator=self.noise_generator, device=self.device)
        return values[rows] if self.distributed else values

    def conditioning(
        self, indices: list[int], rows: list[int], size: int, choices: list[SampleChoice] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        components, cache, device = self.components, self.cache, self.device
        entries = [self.dataset.entries[i] for i in indices]
        choices = choices or [SampleChoice()] * len(indices)
        if self.cache_latents:
            latent_keys = [latent_key(i, c.flip) for i, c in zip(indices, choices, strict=True)]
            dist = to_device(torch.stack([cache[key] for key in latent_keys]), device)
        else:
            with torch.no_grad():
                images = [load_pixels(self.dataset, e) for e in entries]
                images = [p.flip(-1) if c.flip else p for p, c in zip(images, choices, strict=True)]
                pixels = torch.stack(images).to(device)
                dist = components.vae.encode(pixels).latent_dist.parameters.float()
        mean, logvar = torch.chunk(dist, 2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        latents = mean + std * self.draw(tuple(mean.shape), rows, size)
        latents = latents * components.vae.config.scaling_factor
        if self.cache_latents and not self.train_text_encoder:
            keys = [
                text_keys(EMPTY_CAPTION if c.drop_caption else i)
                for i, c in zip(indices, choices, strict=True)
            ]
            embeds = to_device(torch.stack([cache[embeds_key] for embeds_key, _ in keys]), device)
            pooled = to_device(torch.stack([cache[pooled_key] for _, pooled_key in keys]), device)
        else:
            captions = ["" if c.drop_caption else e.caption for e, c in zip(entries, choices, strict=True)]
            ids_1, ids_2 = tokenize(components, captions)
            with torch.set_grad_enabled(self.train_text_encoder):
                embeds, pooled = encode_text(components, ids_1, ids_2)
        conditions = [time_ids(e, c.flip) for e, c in zip(entries, choices, strict=True)]
        add_time_ids = to_device(torch.tensor(conditions), device)
        return latents, embeds, pooled, add_time_ids

    def choices(self, micro_step: int, rows: list[int], size: int) -> list[SampleChoice]:
        """captionDropout's and randomFlip's choices for this rank's rows of micro-step ``micro_step``."""
        return sample_choices(
            self.seed,
            micro_step,
            size,
            rows,
            caption_dropout=self.caption_dropout,
            random_flip=self.random_flip,
        )

    def micro_batch(self, indices: list[int], rows: list[int], size: int, micro_step: int = 0) -> MicroBatch:
        """The conditioning, then the noise (with its offset) and the timesteps, in that draw order."""
        choices = self.choices(micro_step, rows, size)
        latents, embeds, pooled, add_time_ids = self.conditioning(indices, rows, size, choices)
        noise = self.draw(tuple(latents.shape), rows, size)
        if self.noise_offset:
            offset = self.draw((latents.shape[0], latents.shape[1], 1, 1), rows, size)
            noise = noise + self.noise_offset * offset
        steps = self.components.noise_scheduler.config.num_train_timesteps
        timesteps = self.draw((latents.shape[0],), rows, size, integers=steps).long()
        weights = self.loss_weights(indices, choices, (latents.shape[-2], latents.shape[-1]))
        return MicroBatch(latents, embeds, pooled, add_time_ids, noise, timesteps, weights)

    def loss_weights(
        self, indices: list[int], choices: list[SampleChoice], latent_size: tuple[int, int]
    ) -> torch.Tensor | None:
        """The samples' loss masks (flipped with their images; 1 where a sample has none)."""
        entries = [self.dataset.entries[i] for i in indices]
        if all(entry.mask is None for entry in entries):
            return None
        masks = [
            latent_mask(self.dataset.directory / entry.mask, latent_size, choice.flip)
            if entry.mask is not None
            else torch.ones((1, *latent_size))
            for entry, choice in zip(entries, choices, strict=True)
        ]
        return to_device(torch.stack(masks), self.device)
