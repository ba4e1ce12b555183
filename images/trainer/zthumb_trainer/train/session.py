"""One process's training session, built once before the first step: the accelerator, the SDXL
parts on their devices and dtypes, the latent cache, the LoRA layers, compile, the optimizer.

``loop.run_training`` builds it with ``open_session`` and runs the loop over it; the loop's body
(one micro-batch: forward, loss, backward, optimizer) is ``TrainingSession.micro_step``.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Any

import torch

from zthumb_trainer.dataset.prepare import PreparedDataset
from zthumb_trainer.train.components import Components, load_components
from zthumb_trainer.train.config import TrainConfig
from zthumb_trainer.train.latent_cache import load_or_build_cache
from zthumb_trainer.train.model_setup import add_lora, compile_unet, effective_precision, uses_cuda_graphs
from zthumb_trainer.train.objective import diffusion_loss
from zthumb_trainer.train.optim import LoraEma, make_optimizer
from zthumb_trainer.train.step_inputs import MicroBatch

log = logging.getLogger("zthumb_trainer.train")


@dataclass
class TrainingSession:
    config: TrainConfig
    accelerator: Any
    components: Components
    # The trainable models by name ("unet", and the text encoders when they train), as accelerate
    # prepared them (wrapped for DDP in a multi-process run), and the same models unwrapped.
    models: dict[str, Any]
    unwrapped: dict[str, Any]
    params: list[torch.nn.Parameter]  # the LoRA parameters the optimizer updates
    optimizer: Any
    lr_scheduler: Any
    ema: LoraEma | None
    precision: str  # "no", "fp16" or "bf16": what the run really uses (fp16 needs a GPU)
    weight_dtype: torch.dtype  # of the frozen base
    cache: dict[str, torch.Tensor]
    cache_hit: bool
    setup_peak_bytes: int  # the GPU peak before the loop (the cache build included); 0 on a CPU
    # The gradient norm before clipping at the last optimizer step, on the device (None before one,
    # or where accelerate's clipping returns none).
    grad_norm: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def cuda_graphs(self) -> bool:
        return self.config.compile and uses_cuda_graphs(self.config.compile_mode, self.device)

    def micro_step(self, batch: MicroBatch) -> torch.Tensor:
        """Forward, loss, backward and (at a gradient-accumulation boundary) the optimizer step of
        one micro-batch; the detached loss, left on the device (reading it back would synchronise)."""
        config, accelerator, dtype = self.config, self.accelerator, self.weight_dtype
        unet, noise_scheduler = self.models["unet"], self.components.noise_scheduler
        if self.cuda_graphs:
            # A new iteration for CUDA graph trees: the last step's graph outputs are dead.
            torch.compiler.cudagraph_mark_step_begin()
        with accelerator.accumulate(unet):
            noisy = noise_scheduler.add_noise(batch.latents, batch.noise, batch.timesteps)
            prediction = unet(
                noisy.to(dtype),
                batch.timesteps,
                batch.embeds.to(dtype),
                added_cond_kwargs={"text_embeds": batch.pooled.to(dtype), "time_ids": batch.add_time_ids},
                return_dict=False,
            )[0]
            loss = diffusion_loss(
                noise_scheduler, prediction, latents=batch.latents, noise=batch.noise,
                timesteps=batch.timesteps, snr_gamma=config.snr_gamma, weights=batch.loss_weights,
            )  # fmt: skip
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                # No clipping (maxGradNorm null) still measures the norm: an infinite bound scales
                # the gradients by exactly 1.
                max_norm = config.max_grad_norm if config.max_grad_norm is not None else math.inf
                norm = accelerator.clip_grad_norm_(self.params, max_norm)
                self.grad_norm = norm.detach() if isinstance(norm, torch.Tensor) else None
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def open_session(config: TrainConfig, dataset: PreparedDataset) -> TrainingSession:
    """Everything the loop needs, on this process's device (CUDA when there is one)."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params

    precision = effective_precision(config.mixed_precision)
    accelerator = _accelerator(config, precision)
    device = accelerator.device
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    components = load_components(config.base_model, config.model_config_dir)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    _place_frozen_parts(components, device, weight_dtype, config.train_text_encoder)
    with accelerator.main_process_first():
        cache, cache_hit = (
            load_or_build_cache(components, dataset, config, device, accelerator.is_main_process)
            if config.cache_latents
            else ({}, False)
        )
    log.info("latent cache %s (%d images)", "reused" if cache_hit else "built", len(dataset.entries))
    if device.type == "cuda" and config.cache_latents and not config.train_text_encoder:
        # Everything the VAE and the text encoders produce is in the cache: free their GPU memory.
        for module in (components.vae, components.text_encoder, components.text_encoder_2):
            module.to("cpu")
        torch.cuda.empty_cache()

    components.unet.to(device, dtype=weight_dtype)
    models = add_lora(
        components,
        rank=config.rank,
        alpha=config.alpha,
        use_dora=config.use_dora,
        text_encoders=config.train_text_encoder,
    )
    if weight_dtype != torch.float32:
        # Trainable LoRA parameters stay fp32 for stable updates; the frozen base runs in half precision.
        cast_training_params(list(models.values()), dtype=torch.float32)
    if config.gradient_checkpointing:
        components.unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            components.text_encoder.gradient_checkpointing_enable()
            components.text_encoder_2.gradient_checkpointing_enable()
    if config.compile:
        compiled = compile_unet(
            components.unet,
            backend=config.compile_backend,
            scope=config.compile_scope,
            mode=config.compile_mode,
        )
        log.info(
            "torch.compile (%s, mode %s) of the UNet's %s: %d module(s)",
            config.compile_backend, config.compile_mode, config.compile_scope, compiled,
        )  # fmt: skip

    params = [p for model in models.values() for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(config.optimizer, params, config.learning_rate, device)
    ema = LoraEma(params, config.ema_decay) if config.ema_decay is not None else None
    # accelerate steps a prepared scheduler once per process at each optimizer step, so its
    # step counts are per process (as in diffusers' training scripts).
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.max_train_steps * accelerator.num_processes,
    )
    prepared = accelerator.prepare(*models.values(), optimizer, lr_scheduler)
    models = dict(zip(models, prepared[: len(models)], strict=True))
    optimizer, lr_scheduler = prepared[len(models)], prepared[len(models) + 1]

    setup_peak_bytes = 0
    if device.type == "cuda":
        # Two peaks: the whole run's (the cache build included) and the training loop's alone.
        setup_peak_bytes = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    return TrainingSession(
        config=config,
        accelerator=accelerator,
        components=components,
        models=models,
        unwrapped={name: accelerator.unwrap_model(model) for name, model in models.items()},
        params=params,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        ema=ema,
        precision=precision,
        weight_dtype=weight_dtype,
        cache=cache,
        cache_hit=cache_hit,
        setup_peak_bytes=setup_peak_bytes,
    )


def _accelerator(config: TrainConfig, precision: str) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # accelerate keeps its settings in process-wide singletons; forget an earlier run's (tests, the
    # benchmark) but keep the process group (PartialState) a distributed launch set up.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    accelerator = Accelerator(
        # bf16 runs natively (bf16 weights and activations, fp32 LoRA master weights: see loop.py's
        # docstring), so accelerate adds no autocast; fp16 keeps autocast and its gradient scaler.
        mixed_precision="no" if precision == "bf16" else precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # Without a GPU, a torchrun launch (WORLD_SIZE > 1) is a gloo process group only with cpu=True.
        cpu=not torch.cuda.is_available(),
    )
    # Says, in every process's log, that it took part (a multi-node run: one line per node and GPU).
    log.info(
        "process %d of %d (local %d) on %s, backend %s",
        accelerator.process_index,
        accelerator.num_processes,
        accelerator.local_process_index,
        accelerator.device,
        accelerator.state.backend or "none",
    )
    if accelerator.device.type == "cuda":
        # The fp32 LoRA matmuls (tiny next to the bf16 base) may use TF32.
        torch.backends.cuda.matmul.allow_tf32 = True
    return accelerator


def _place_frozen_parts(
    components: Components, device: torch.device, weight_dtype: torch.dtype, train_text_encoder: bool
) -> None:
    """Freeze the SDXL parts and move the VAE and the text encoders to the device."""
    for module in (components.unet, components.vae, components.text_encoder, components.text_encoder_2):
        module.requires_grad_(False)
    # The VAE stays fp32: it runs once per image (cache) and SDXL's overflows in fp16.
    components.vae.to(device, dtype=torch.float32)
    frozen_text_dtype = torch.float32 if train_text_encoder else weight_dtype
    components.text_encoder.to(device, dtype=frozen_text_dtype)
    components.text_encoder_2.to(device, dtype=frozen_text_dtype)
