"""train: SDXL LoRA fine-tuning with PEFT, as a library function (``run_training``) the CLI wraps.

Follows diffusers' ``examples/text_to_image/train_text_to_image_lora_sdxl.py`` (the same loss,
micro-conditioning, min-SNR weighting and noise offset) and adds what a Job on a shared
volume needs:

* VAE latent distributions and text embeddings are computed once into
  ``<run-dir>/cache/`` and reused across epochs and restarts;
* checkpoints every N optimizer steps (adapter, its EMA if on, optimizer, LR scheduler, RNG, step),
  written to a temporary name and renamed, the last K kept; a restarted pod resumes
  from the newest and never repeats a finished step;
* SIGTERM (a deleted, evicted or preempted pod) finishes the current step, writes a
  checkpoint of it and exits, so the Job's next pod loses nothing. The trainer is PID 1
  in its container, and PID 1 ignores SIGTERM unless it handles it: without this the
  pod trained on for its whole grace period, was SIGKILLed, and every step since the
  last checkpoint was trained again;
* the data order is a pure function of (seed, step), so a resumed run sees exactly
  the batches the uninterrupted run would have.

Throughput (issue 14): with ``mixed_precision="bf16"`` the frozen UNet and text encoders hold
bf16 weights and run bf16 activations natively, without autocast (the way the model is served),
while the LoRA parameters stay fp32 master weights: PEFT computes the small LoRA branch in fp32
and adds it back in bf16, and AdamW updates fp32 values (a 1e-4-sized update would round away
in bf16's 8-bit mantissa). On CUDA the optimizer is ``AdamW(fused=True)``, batches are copied
from pinned memory without blocking, and the loss stays on the device until a logging point
(every ``log_every_steps`` steps, a checkpoint, the end), so a step has no host synchronisation.
``compile=True`` compiles the UNet's repeated transformer blocks (regional ``torch.compile``), or
the whole UNet (``compile_scope="unet"``); ``compile_mode="reduce-overhead"`` replays the graphs as
CUDA graphs, each step marked as a new iteration for them.
The optimizer choice and the EMA live in ``optim.py``, the steps/s and peak memory in ``measure.py``,
a micro-batch's inputs and noise in ``step_inputs.py``, the loss logging in ``loss_log.py``.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from zthumb_contract.spec import TrainingSpec

from zthumb_trainer.batches import BatchSchedule
from zthumb_trainer.checkpoints import (
    CHECKPOINT_PREFIX,
    adapter_state,
    list_checkpoints,
    lora_configs,
    restore_checkpoint,
    save_checkpoint,
)
from zthumb_trainer.components import load_components
from zthumb_trainer.dataset import load_manifest
from zthumb_trainer.latent_cache import load_or_build_cache
from zthumb_trainer.loss_log import LossLog
from zthumb_trainer.measure import StepClock, training_block
from zthumb_trainer.model_setup import add_lora, compile_unet, effective_precision, uses_cuda_graphs
from zthumb_trainer.objective import diffusion_loss
from zthumb_trainer.optim import LoraEma, ema_applied, make_optimizer, require_available
from zthumb_trainer.reporting import ProgressLog, StatusReporter, write_termination_message
from zthumb_trainer.step_inputs import StepInputs
from zthumb_trainer.stop_signal import StopSignal
from zthumb_trainer.validation import Validation

log = logging.getLogger(__name__)


class TrainConfig(TrainingSpec):
    """One training run: the options of the LoRAFinetune's ``spec.training`` (declared once, in
    ``zthumb_contract.spec``), plus where to read and write."""

    run_dir: Path
    base_model: Path
    model_config_dir: Path | None = None  # diffusers configs beside a single-file checkpoint
    export_dir: Path | None = None
    run_name: str = "lora"
    base_model_sha256: str = ""
    trigger_word: str = ""
    # Not step arguments: knobs for tests and the benchmark.
    cache_latents: bool = True
    stop_after_step: int | None = None  # simulate a killed pod right after this step
    progress_bar: bool = True
    report_interval_seconds: float = 10.0
    # The loss is read back to the host (and progress.jsonl written) every N steps, at each
    # checkpoint and at the end; None: every step on a CPU (it costs nothing there), 10 on a GPU.
    log_every_steps: int | None = None
    compile_backend: str = "inductor"  # "aot_eager" exercises the compile path quickly on a CPU

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"


class TrainingInterrupted(Exception):  # noqa: N818 - an outcome, not an error
    """Raised after a checkpoint of the last finished step: ``stop_after_step`` or SIGTERM."""


# --- the loop ---------------------------------------------------------------------------------


def run_training(config: TrainConfig) -> dict[str, Any]:
    """Train (resuming if a checkpoint exists), export, and return the summary."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from tqdm import tqdm

    started = time.monotonic()
    # Before minutes of model loading; the device accelerate picks below (CUDA when there is one).
    require_available(config.optimizer, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    dataset = load_manifest(config.run_dir)
    # accelerate keeps its settings in process-wide singletons; forget an earlier run's (tests, the
    # benchmark) but keep the process group (PartialState) a distributed launch set up.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    precision = effective_precision(config.mixed_precision)
    accelerator = Accelerator(
        # bf16 runs natively (bf16 weights and activations, fp32 LoRA master weights: see the module
        # docstring), so accelerate adds no autocast; fp16 keeps autocast and its gradient scaler.
        mixed_precision="no" if precision == "bf16" else precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # Without a GPU, a torchrun launch (WORLD_SIZE > 1) is a gloo process group only with cpu=True.
        cpu=not torch.cuda.is_available(),
    )
    device = accelerator.device
    # Says, in every process's log, that it took part (a multi-node run: one line per node and GPU).
    log.info(
        "process %d of %d (local %d) on %s, backend %s",
        accelerator.process_index,
        accelerator.num_processes,
        accelerator.local_process_index,
        device,
        accelerator.state.backend or "none",
    )
    if device.type == "cuda":
        # The fp32 LoRA matmuls (tiny next to the bf16 base) may use TF32.
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    components = load_components(config.base_model, config.model_config_dir)
    for module in (components.unet, components.vae, components.text_encoder, components.text_encoder_2):
        module.requires_grad_(False)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    # The VAE stays fp32: it runs once per image (cache) and SDXL's overflows in fp16.
    components.vae.to(device, dtype=torch.float32)
    frozen_text_dtype = torch.float32 if config.train_text_encoder else weight_dtype
    components.text_encoder.to(device, dtype=frozen_text_dtype)
    components.text_encoder_2.to(device, dtype=frozen_text_dtype)

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

    cuda_graphs = config.compile and uses_cuda_graphs(config.compile_mode, device)
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
    lr_scheduler = get_scheduler(
        "constant", optimizer=optimizer, num_training_steps=config.max_train_steps * accelerator.num_processes
    )
    prepared = accelerator.prepare(*models.values(), optimizer, lr_scheduler)
    models = dict(zip(models, prepared[: len(models)], strict=True))
    optimizer, lr_scheduler = prepared[len(models)], prepared[len(models) + 1]
    unet = models["unet"]
    unwrapped = {name: accelerator.unwrap_model(model) for name, model in models.items()}
    validation = Validation(  # samples with the current adapter (validation.py): rank 0 renders
        config.validation, config.run_dir, components, unwrapped["unet"], device, dataset.resolution,
        config.trigger_word, render=accelerator.is_main_process,
    )  # fmt: skip

    inputs = StepInputs(
        components, dataset, cache, device=device, seed=config.seed, world_size=accelerator.num_processes,
        cache_latents=config.cache_latents, train_text_encoder=config.train_text_encoder,
        noise_offset=config.noise_offset,
    )  # fmt: skip
    first_step = 0
    checkpoints = list_checkpoints(config.checkpoints_dir)
    if checkpoints:
        step, path = checkpoints[-1]
        restore_checkpoint(path, unwrapped, optimizer, lr_scheduler, inputs.noise_generator, ema)
        first_step = step
        log.info("resumed from %s", path)
    resumed_from = first_step

    schedule = BatchSchedule(
        dataset, config.batch_size, config.seed, accelerator.num_processes, accelerator.process_index
    )
    noise_scheduler = components.noise_scheduler
    is_main = accelerator.is_main_process
    progress_log = ProgressLog(config.run_dir / "progress.jsonl") if is_main else None
    reporter = StatusReporter.from_env(config.report_interval_seconds) if is_main else None
    bar = tqdm(
        total=config.max_train_steps,
        initial=first_step,
        desc="train",
        disable=not (config.progress_bar and is_main),
        file=sys.stderr,
        mininterval=1.0,
    )

    loss_value: float | None = None
    setup_peak_bytes = 0
    if device.type == "cuda":
        # Two peaks: the whole run's (the cache build included) and the training loop's alone.
        setup_peak_bytes = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    loss_log = LossLog(accelerator, config.max_train_steps, progress_log, reporter, bar)
    clock = StepClock(device)
    log_every = config.log_every_steps or (10 if device.type == "cuda" else 1)

    step = first_step

    def checkpoint(at_step: int, at_loss: float) -> None:
        save_checkpoint(
            config.checkpoints_dir,
            at_step,
            models=unwrapped,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            noise_generator=inputs.noise_generator,
            state={"loss": at_loss, "dataset_hash": dataset.dataset_hash, "ema_decay": config.ema_decay},
            keep=config.checkpoints_total_limit,
            ema=ema,
        )

    def stop_requested() -> bool:
        stop = stop_signal.received is not None
        if accelerator.num_processes > 1:  # every rank stops at the same step, or a collective hangs
            flag = torch.tensor([1.0 if stop else 0.0], device=device)
            stop = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
        return stop

    stop_signal = StopSignal().install()
    try:
        for step in range(first_step + 1, config.max_train_steps + 1):
            step_loss = torch.zeros((), device=device)
            for micro in range(config.gradient_accumulation_steps):
                micro_step = (step - 1) * config.gradient_accumulation_steps + micro
                indices = schedule.batch(micro_step)
                rows, size = schedule.rows(micro_step)
                if cuda_graphs:
                    # A new iteration for CUDA graph trees: the last step's graph outputs are dead.
                    torch.compiler.cudagraph_mark_step_begin()
                with accelerator.accumulate(unet):
                    batch = inputs.micro_batch(indices, rows, size)
                    noisy = noise_scheduler.add_noise(batch.latents, batch.noise, batch.timesteps)
                    prediction = unet(
                        noisy.to(weight_dtype),
                        batch.timesteps,
                        batch.embeds.to(weight_dtype),
                        added_cond_kwargs={
                            "text_embeds": batch.pooled.to(weight_dtype), "time_ids": batch.add_time_ids
                        },
                        return_dict=False,
                    )[0]  # fmt: skip
                    loss = diffusion_loss(
                        noise_scheduler, prediction, latents=batch.latents, noise=batch.noise,
                        timesteps=batch.timesteps, snr_gamma=config.snr_gamma,
                    )  # fmt: skip
                    step_loss = step_loss + loss.detach() / config.gradient_accumulation_steps
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)

            if ema is not None:
                ema.update(step)
            loss_log.add(step, step_loss, lr_scheduler.get_last_lr()[0])
            clock.step_done()
            at_checkpoint = step % config.checkpointing_steps == 0 or step == config.max_train_steps
            stopping = config.stop_after_step is not None and step >= config.stop_after_step
            # The same steps on every rank: the gather in flush() is a collective.
            if step % log_every == 0 or at_checkpoint or stopping:
                loss_value = loss_log.flush()
            if at_checkpoint and is_main:
                assert loss_value is not None
                checkpoint(step, loss_value)
            if validation.due(step) and step < config.max_train_steps:  # the last: after the loop
                clock.exclude(validation.run(step, accelerator))
            if step < config.max_train_steps and stop_requested():
                if loss_log.pending:  # a collective on every rank: stop_requested() agreed on the step
                    loss_value = loss_log.flush()
                if not at_checkpoint and is_main:
                    assert loss_value is not None
                    checkpoint(step, loss_value)
                accelerator.wait_for_everyone()
                raise TrainingInterrupted(
                    f"stopped after step {step} on {stop_signal.received or 'a signal to another rank'}; "
                    f"checkpoint {config.checkpoints_dir / f'{CHECKPOINT_PREFIX}{step}'} written, "
                    "the next pod resumes from it"
                )
            if stopping:
                accelerator.wait_for_everyone()
                raise TrainingInterrupted(f"stopped after step {step} (test hook)")
    finally:
        stop_signal.restore()
        bar.close()

    accelerator.wait_for_everyone()
    clock.finish()
    train_seconds = time.monotonic() - loss_log.started - validation.seconds
    validation.run(config.max_train_steps, accelerator)  # unless a resumed run has it on disk
    if loss_value is None and checkpoints:
        loss_value = json.loads((checkpoints[-1][1] / "state.json").read_text()).get("loss")
    summary: dict[str, Any] = {
        "run_name": config.run_name,
        "steps": config.max_train_steps,
        "resumed_from_step": resumed_from,
        "steps_this_run": loss_log.steps,
        "final_loss": loss_value,
        "mean_loss": loss_log.mean,
        "seconds": round(time.monotonic() - started, 2),
        "train_seconds": round(train_seconds, 2),
        "steps_per_second": round(loss_log.steps / train_seconds, 4)
        if train_seconds > 0 and loss_log.steps
        else None,
        "latent_cache": "reused" if cache_hit else ("built" if config.cache_latents else "off"),
        "dataset_hash": dataset.dataset_hash,
        "images": len(dataset.entries),
        "mixed_precision": precision,
        "compile": f"{config.compile_scope}, {config.compile_mode}" if config.compile else False,
        "device": str(device),
        "gpus": accelerator.num_processes if device.type == "cuda" else 0,
        # Every process prints its summary: these say which one it was (rank 0 also exports).
        "process_index": accelerator.process_index,
        "world_size": accelerator.num_processes,
    }
    if device.type == "cuda":
        train_peak_bytes = torch.cuda.max_memory_allocated()
        summary["peak_gpu_memory_gb"] = round(max(setup_peak_bytes, train_peak_bytes) / 2**30, 3)
        summary["peak_train_gpu_memory_gb"] = round(train_peak_bytes / 2**30, 3)
    summary["training"] = training_block(clock, device, setup_peak_bytes, loss_value)
    summary["validation"] = validation.summary()
    if is_main:
        if config.export_dir is not None:
            from zthumb_trainer.export import AdapterInfo, export_adapter

            with ema_applied(ema):  # the EMA, when on, is what gets served
                exported = adapter_state(unwrapped)
            info = AdapterInfo.of_run(config, dataset.dataset_hash)
            export_adapter(config.export_dir, exported, lora_configs(unwrapped), info)
            summary["adapter_dir"] = str(config.export_dir)
        (config.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_termination_message(summary)
    if reporter and loss_value is not None:
        reporter.report(config.max_train_steps, config.max_train_steps, loss_value, 0, force=True)
    return summary
