"""The optimizer of ``spec.training.optimizer`` and the EMA of ``spec.training.emaDecay``.

* ``adamw``: ``torch.optim.AdamW`` over the fp32 LoRA parameters, one fused kernel per step on
  CUDA (which also keeps its step counters on the device: no host synchronisation).
* ``prodigy``: ``prodigyopt.Prodigy``, which estimates the step size ``d`` itself; the learning
  rate multiplies that estimate, so it wants about 1.0. Its estimate (``d``, ``d_numerator``, …)
  lives in the param groups, which ``optimizer.state_dict()`` saves with the per-parameter
  state: a checkpoint resumes it exactly.
* ``adamw8bit``: bitsandbytes' ``AdamW8bit`` (pinned in the trainer extra), which keeps Adam's two
  moments in 8 bits on CUDA and, since bitsandbytes 0.49, on the CPU. Whether the train step's
  device has it is not assumed from a version table: ``require_available`` runs one step on a
  probe parameter there and refuses, naming the field, when it fails or does not keep 8-bit
  state, before any model is loaded.

The LoRA state is small (a rank-16 SDXL UNet adapter: 23 M parameters, 190 MB of Adam state),
so 8-bit AdamW saves little memory there; it is offered because users ask for it by name.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

log = logging.getLogger(__name__)

# The same AdamW settings for adamw and adamw8bit; Prodigy shares betas, eps and weight decay.
BETAS = (0.9, 0.999)
WEIGHT_DECAY = 1e-2
EPS = 1e-8
# Below this, a Prodigy learning rate shrinks the estimated step so much that training stalls
# (the usual mistake: keeping AdamW's 1e-4).
PRODIGY_LOW_LR = 0.1


class OptimizerUnavailable(RuntimeError):  # noqa: N818 - reads as the outcome it is
    """The chosen optimizer cannot run here; the message names ``spec.training.optimizer``."""


# bitsandbytes keeps 8-bit state only for tensors of at least this many elements (its
# ``min_8bit_size``); the probe parameter is that big.
PROBE_ELEMENTS = 4096


def require_available(name: str, device: torch.device) -> None:
    """Fail fast, before the model is loaded, when ``name`` cannot run on ``device``."""
    if name == "adamw8bit":
        probe_adamw8bit(device)
    if name == "prodigy" and importlib.util.find_spec("prodigyopt") is None:
        raise OptimizerUnavailable(
            "spec.training.optimizer prodigy needs the prodigyopt package (the trainer extra pins it)"
        )


def probe_adamw8bit(device: torch.device) -> None:
    """One AdamW8bit step on a probe parameter on ``device``: it must run and keep uint8 state."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise OptimizerUnavailable(
            "spec.training.optimizer adamw8bit needs the bitsandbytes package, which this trainer "
            "image does not have (the trainer extra pins it): use an image with it, or choose adamw "
            "or prodigy"
        )
    import bitsandbytes as bnb

    probe = torch.nn.Parameter(torch.zeros(PROBE_ELEMENTS, device=device))
    probe.grad = torch.ones_like(probe)
    try:
        optimizer = bnb.optim.AdamW8bit([probe], lr=1e-3)
        optimizer.step()
        state = optimizer.state[probe]
    except Exception as error:  # any failure of the kernels means "not on this device"
        raise OptimizerUnavailable(
            f"spec.training.optimizer adamw8bit: bitsandbytes {bnb.__version__} cannot run 8-bit AdamW "
            f"on this train step's device ({device.type}: {type(error).__name__}: {error}); choose "
            "adamw or prodigy"
        ) from error
    if state.get("state1") is None or state["state1"].dtype != torch.uint8:
        raise OptimizerUnavailable(
            f"spec.training.optimizer adamw8bit: bitsandbytes {bnb.__version__} keeps no 8-bit state "
            f"on {device.type} here; choose adamw or prodigy"
        )


def make_optimizer(
    name: str, params: list[torch.nn.Parameter], learning_rate: float, device: torch.device
) -> torch.optim.Optimizer:
    if name == "adamw":
        kwargs: dict[str, Any] = {
            "lr": learning_rate,
            "betas": BETAS,
            "weight_decay": WEIGHT_DECAY,
            "eps": EPS,
        }
        if device.type == "cuda":
            kwargs["fused"] = True
        return torch.optim.AdamW(params, **kwargs)
    if name == "prodigy":
        from prodigyopt import Prodigy

        if learning_rate < PRODIGY_LOW_LR:
            log.warning(
                "spec.training.learningRate is %g with optimizer prodigy: Prodigy estimates the step "
                "size itself and multiplies it by the learning rate, so %g makes every update %gx "
                "smaller than Prodigy's estimate; about 1.0 is usual",
                learning_rate,
                learning_rate,
                learning_rate,
            )
        # As diffusers' DreamBooth LoRA scripts: bias correction on (Adam-like early steps), and the
        # safeguard that keeps the estimate from growing on the first, noisy steps.
        return Prodigy(
            params,
            lr=learning_rate,
            betas=BETAS,
            weight_decay=WEIGHT_DECAY,
            eps=EPS,
            decouple=True,
            use_bias_correction=True,
            safeguard_warmup=True,
        )
    if name == "adamw8bit":
        import bitsandbytes as bnb  # require_available probed it on this device

        optimizer: torch.optim.Optimizer = bnb.optim.AdamW8bit(
            params, lr=learning_rate, betas=BETAS, weight_decay=WEIGHT_DECAY, eps=EPS
        )
        return optimizer
    raise ValueError(f"unknown spec.training.optimizer {name!r}")


class LoraEma:
    """An fp32 exponential moving average of the trainable LoRA parameters.

    Updated once per optimizer step with the decay ramp of diffusers' ``EMAModel``,
    ``min(decay, (1 + step) / (10 + step))``: on the first steps the average follows the weights
    closely instead of holding on to the initial ones (LoRA's B matrices start at zero, so an
    average dominated by step 0 would export an adapter that does almost nothing). The ramp is a
    function of the step alone, so a resumed run (shadow restored from the checkpoint) continues
    bit for bit. Every rank keeps it: the weights are identical across ranks after each step, and
    it costs one small fused lerp.
    """

    def __init__(self, params: list[torch.nn.Parameter], decay: float) -> None:
        self.params = params
        self.decay = decay
        self.shadow = [param.detach().to(torch.float32, copy=True) for param in params]

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimizer step ``step`` (1-based): shadow += (1 - decay) · (param - shadow)."""
        weight = 1.0 - self.decay_at(step)
        torch._foreach_lerp_(self.shadow, [param.detach().float() for param in self.params], weight)

    @torch.no_grad()
    def capture(self) -> None:
        """Take the current parameter values as the shadow (restoring it from a checkpoint)."""
        for shadow, param in zip(self.shadow, self.params, strict=True):
            shadow.copy_(param.detach())

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The parameters hold the shadow inside the block (to save or export it), then their own
        values again. The LoRA parameters are fp32, like the shadow: the swap is lossless."""
        saved = [param.detach().clone() for param in self.params]
        with torch.no_grad():
            for param, shadow in zip(self.params, self.shadow, strict=True):
                param.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, value in zip(self.params, saved, strict=True):
                    param.copy_(value)


@contextmanager
def ema_applied(ema: LoraEma | None) -> Iterator[None]:
    """``ema.applied()``, or nothing when EMA is off."""
    if ema is None:
        yield
    else:
        with ema.applied():
            yield
