"""The training objective of the diffusers SDXL example: MSE against the noise (or velocity),
optionally min-SNR-γ weighted."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812


def min_snr_weights(noise_scheduler: Any, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023), as in the diffusers example."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.stack([snr, gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    if noise_scheduler.config.prediction_type == "epsilon":
        return weights / snr
    return weights / (snr + 1)


def diffusion_loss(
    noise_scheduler: Any,
    prediction: torch.Tensor,
    *,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    snr_gamma: float | None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss; ``weights`` (B x 1 x H x W, the loss masks at the latents' resolution) weight each
    latent pixel's error, so a pixel of weight 0 gets no gradient."""
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    if not snr_gamma and weights is None:
        return F.mse_loss(prediction.float(), target.float(), reduction="mean")
    per_element = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if weights is not None:
        per_element = per_element * weights
    per_item = per_element.mean(dim=list(range(1, per_element.ndim)))
    if snr_gamma:
        per_item = per_item * min_snr_weights(noise_scheduler, timesteps, snr_gamma)
    return per_item.mean()
