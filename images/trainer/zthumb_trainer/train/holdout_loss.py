"""The holdout loss: the denoising loss of the current adapter on the images prepare-dataset kept
out of training (``spec.dataset.holdout``), an overfitting signal: it falls while the adapter
learns what generalises and rises once it memorises the training images.

Measured at every validation step (``spec.training.validation.everyNSteps``, prompts or not) and
at the end of training, by rank 0 only. Comparable across steps and runs: each image's latents are
the VAE's mean (no sampled latents), the noise comes from its own generator seeded with the run's
seed at every pass, and the timesteps are fixed fractions of the schedule. Bounded: at most
``MAX_IMAGES`` held-out images (the first in manifest order) at ``len(TIMESTEP_FRACTIONS)``
timesteps each, one image per UNet call. The plain MSE (no min-SNR weighting, no loss masks): the
same number whatever the training options.

Training stays bit-identical with the pass on or off: it runs under ``torch.no_grad`` with the
models in eval mode (their modes restored), draws only from its own generator, and restores the
global RNG states afterwards.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from zthumb_trainer.dataset.prepare import ManifestEntry, PreparedDataset
from zthumb_trainer.reporting import ProgressLog
from zthumb_trainer.train.batches import load_pixels, time_ids
from zthumb_trainer.train.components import Components, encode_text, tokenize
from zthumb_trainer.train.objective import diffusion_loss
from zthumb_trainer.train.tensorboard_log import TensorBoardLog
from zthumb_trainer.train.validation import RngState

log = logging.getLogger(__name__)

MAX_IMAGES = 8
# Where on the noise schedule the loss is measured: low, middle and high noise.
TIMESTEP_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class _Inputs:
    latents: torch.Tensor  # 1 x C x H x W, scaled, on the UNet's device
    embeds: torch.Tensor
    pooled: torch.Tensor
    add_time_ids: torch.Tensor


def holdout_due(every_n_steps: int | None, step: int) -> bool:
    """A holdout pass after this step inside the loop (the one at the end: after the loop)."""
    return every_n_steps is not None and step % every_n_steps == 0


class HoldoutLoss:
    """The holdout passes of one train process (``measure`` only where it is called: rank 0)."""

    def __init__(
        self,
        components: Components,
        unet: Any,
        dataset: PreparedDataset,
        *,
        device: torch.device,
        seed: int,
        weight_dtype: torch.dtype,
    ) -> None:
        self.components, self.unet, self.device = components, unet, device
        self.dataset, self.seed, self.weight_dtype = dataset, seed, weight_dtype
        self.entries: list[ManifestEntry] = dataset.holdout_entries[:MAX_IMAGES]
        self._inputs: list[_Inputs] | None = None
        self.losses: dict[int, float] = {}  # this process's passes, by step
        steps = components.noise_scheduler.config.num_train_timesteps
        self.timesteps = [min(steps - 1, round(fraction * steps)) for fraction in TIMESTEP_FRACTIONS]

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def record(self, step: int, progress_log: ProgressLog | None, tensorboard: TensorBoardLog) -> float:
        """Measure after ``step`` and write the value to ``progress.jsonl`` (a record of its own:
        ``{"step", "holdout_loss", "time"}``) and TensorBoard (``holdout/loss``); the seconds spent
        (to leave out of steps/s)."""
        if not self.enabled:
            return 0.0
        started = time.monotonic()
        value = self.measure()
        assert value is not None
        self.losses[step] = value
        if progress_log is not None:
            progress_log.append({"step": step, "holdout_loss": value, "time": time.time()})
        tensorboard.holdout(step, value)
        seconds = time.monotonic() - started
        log.info("holdout loss after step %d: %.6f (%.1fs)", step, value, seconds)
        return seconds

    def summary(self) -> dict[str, Any] | None:
        """``holdout`` of the train summary (None: no held-out images)."""
        if not self.dataset.holdout_entries:
            return None
        last = max(self.losses) if self.losses else None
        return {
            "images": len(self.dataset.holdout_entries),
            "measured_images": len(self.entries),
            "timesteps": self.timesteps,
            "final_loss": self.losses[last] if last is not None else None,
            "losses": {str(step): value for step, value in sorted(self.losses.items())},
        }

    def measure(self) -> float | None:
        """The mean loss over the held-out images and the fixed timesteps (None: no holdout)."""
        if not self.enabled:
            return None
        modules = [
            self.unet,
            self.components.vae,
            self.components.text_encoder,
            self.components.text_encoder_2,
        ]
        modes = [module.training for module in modules]
        rng = RngState()
        try:
            for module in modules:
                module.eval()
            with torch.no_grad():
                return self._measure()
        finally:
            for module, mode in zip(modules, modes, strict=True):
                module.train(mode)
            rng.restore()

    def _measure(self) -> float:
        scheduler = self.components.noise_scheduler
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        losses: list[torch.Tensor] = []
        for inputs in self._encoded():
            for timestep in self.timesteps:
                noise = torch.randn(inputs.latents.shape, generator=generator).to(self.device)
                timesteps = torch.tensor([timestep], device=self.device, dtype=torch.long)
                noisy = scheduler.add_noise(inputs.latents, noise, timesteps)
                prediction = self.unet(
                    noisy.to(self.weight_dtype),
                    timesteps,
                    inputs.embeds.to(self.weight_dtype),
                    added_cond_kwargs={
                        "text_embeds": inputs.pooled.to(self.weight_dtype),
                        "time_ids": inputs.add_time_ids,
                    },
                    return_dict=False,
                )[0]
                loss = diffusion_loss(
                    scheduler,
                    prediction,
                    latents=inputs.latents,
                    noise=noise,
                    timesteps=timesteps,
                    snr_gamma=None,
                )
                losses.append(loss)
        return float(torch.stack(losses).mean().item())

    def _encoded(self) -> list[_Inputs]:
        """The held-out images' latents and text conditioning, encoded once (the frozen parts do
        not change), each on the module's own device (the latent cache may have parked it)."""
        if self._inputs is None:
            c = self.components
            vae_device = next(c.vae.parameters()).device
            self._inputs = []
            for entry in self.entries:
                pixels = load_pixels(self.dataset, entry).unsqueeze(0).to(vae_device)
                mean = c.vae.encode(pixels).latent_dist.mean.float()
                embeds, pooled = encode_text(c, *tokenize(c, [entry.caption]))
                self._inputs.append(
                    _Inputs(
                        latents=(mean * c.vae.config.scaling_factor).to(self.device),
                        embeds=embeds.to(self.device),
                        pooled=pooled.to(self.device),
                        add_time_ids=torch.tensor([time_ids(entry)], device=self.device),
                    )
                )
        return self._inputs
