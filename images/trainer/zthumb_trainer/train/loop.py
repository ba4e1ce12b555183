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

Throughput: with ``mixed_precision="bf16"`` the frozen UNet and text encoders hold
bf16 weights and run bf16 activations natively, without autocast (the way the model is served),
while the LoRA parameters stay fp32 master weights: PEFT computes the small LoRA branch in fp32
and adds it back in bf16, and AdamW updates fp32 values (a 1e-4-sized update would round away
in bf16's 8-bit mantissa). On CUDA the optimizer is ``AdamW(fused=True)``, batches are copied
from pinned memory without blocking, and the loss stays on the device until a logging point
(every ``log_every_steps`` steps, a checkpoint, the end), so a step has no host synchronisation.
``compile=True`` compiles the UNet's repeated transformer blocks (regional ``torch.compile``), or
the whole UNet (``compile_scope="unet"``); ``compile_mode="reduce-overhead"`` replays the graphs as
CUDA graphs, each step marked as a new iteration for them.
The setup (accelerator, models, LoRA layers, compile, optimizer) and one micro-step's forward,
backward and update live in ``session.py``, the optimizer choice and the EMA in ``optim.py``, the
steps/s and peak memory in ``measure.py``, a micro-batch's inputs and noise in ``step_inputs.py``,
the loss logging in ``loss_log.py``, the TensorBoard event files in ``tensorboard_log.py``, the
run's configuration (``TrainConfig``) in ``config.py``; this module holds the loop: resume,
checkpoints, stop, export.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import torch
from tqdm import tqdm

from zthumb_trainer.dataset.prepare import PreparedDataset, load_manifest
from zthumb_trainer.reporting import PROGRESS_LOG, ProgressLog, StatusReporter, write_termination_message
from zthumb_trainer.train.batches import BatchSchedule
from zthumb_trainer.train.checkpoints import (
    CHECKPOINT_PREFIX,
    adapter_state,
    list_checkpoints,  # noqa: F401 - tests import it from here
    lora_configs,
    restore_checkpoint,
    save_checkpoint,
)
from zthumb_trainer.train.config import TrainConfig
from zthumb_trainer.train.holdout_loss import HoldoutLoss, holdout_due
from zthumb_trainer.train.loss_log import LossLog
from zthumb_trainer.train.measure import StepClock, training_block
from zthumb_trainer.train.optim import ema_applied, require_available
from zthumb_trainer.train.resume import resume_point, warn_on_ema_change
from zthumb_trainer.train.session import TrainingSession, open_session
from zthumb_trainer.train.step_inputs import StepInputs
from zthumb_trainer.train.stop_signal import StopSignal
from zthumb_trainer.train.tensorboard_log import TensorBoardLog
from zthumb_trainer.train.tracking_mlflow import (
    INTERRUPTED_FINISH_SECONDS,
    log_run_artifacts,
    open_mlflow_run,
)
from zthumb_trainer.train.validation import Validation, image_name

log = logging.getLogger("zthumb_trainer.train")  # the name session, model_setup and stop_signal log under


class TrainingInterrupted(Exception):  # noqa: N818 - an outcome, not an error
    """Raised after a checkpoint of the last finished step: ``stop_after_step`` or SIGTERM."""


# --- the loop ---------------------------------------------------------------------------------


def run_training(config: TrainConfig) -> dict[str, Any]:
    """Train (resuming if a checkpoint exists), export, and return the summary."""
    started = time.monotonic()
    # Before minutes of model loading; the device accelerate picks below (CUDA when there is one).
    require_available(config.optimizer, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    prepared = load_manifest(config.run_dir)
    dataset = prepared.for_training()  # the held-out images (spec.dataset.holdout) never reach a batch
    resume = resume_point(config.checkpoints_dir, dataset.dataset_hash)  # refuses a changed dataset
    if resume is not None:
        warn_on_ema_change(resume, config.ema_decay)
    session = open_session(config, dataset)
    accelerator, device, unwrapped = session.accelerator, session.device, session.unwrapped
    validation = Validation(  # samples with the current adapter (validation.py): rank 0 renders
        config.validation, config.run_dir, session.components, unwrapped["unet"], device,
        dataset.resolution, config.trigger_word, render=accelerator.is_main_process,
    )  # fmt: skip
    holdout = HoldoutLoss(  # the loss on the held-out images (holdout_loss.py): rank 0 measures
        session.components, unwrapped["unet"], prepared, device=device, seed=config.seed,
        weight_dtype=session.weight_dtype,
    )  # fmt: skip
    inputs = StepInputs(
        session.components, dataset, session.cache, device=device, seed=config.seed,
        world_size=accelerator.num_processes, cache_latents=config.cache_latents,
        train_text_encoder=config.train_text_encoder, noise_offset=config.noise_offset,
        caption_dropout=config.caption_dropout, random_flip=config.random_flip,
    )  # fmt: skip
    first_step = 0
    if resume is not None:
        restore_checkpoint(
            resume.path, unwrapped, session.optimizer, session.lr_scheduler, inputs.noise_generator,
            session.ema,
        )  # fmt: skip
        first_step = resume.step
        log.info("resumed from %s", resume.path)

    schedule = BatchSchedule(
        dataset, config.batch_size, config.seed, accelerator.num_processes, accelerator.process_index
    )
    is_main = accelerator.is_main_process
    progress_log = ProgressLog(config.run_dir / PROGRESS_LOG) if is_main else None
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
    mlflow_run = open_mlflow_run(config, reporter) if is_main else None  # spec.training.tracking.mlflow
    tensorboard = TensorBoardLog(
        config.logs_dir if is_main else None, resumed_from=first_step, device=device, mirror=mlflow_run
    )
    loss_log = LossLog(
        accelerator, config.max_train_steps, progress_log, reporter, bar, tensorboard, first_step=first_step
    )
    clock = StepClock(device)
    log_every = config.log_every_steps or (10 if device.type == "cuda" else 1)

    def checkpoint(at_step: int, at_loss: float) -> None:
        save_checkpoint(
            config.checkpoints_dir,
            at_step,
            models=unwrapped,
            optimizer=session.optimizer,
            lr_scheduler=session.lr_scheduler,
            noise_generator=inputs.noise_generator,
            state={"loss": at_loss, "dataset_hash": dataset.dataset_hash, "ema_decay": config.ema_decay},
            keep=config.checkpoints_total_limit,
            ema=session.ema,
        )

    def validate(at_step: int) -> float:
        """A validation pass (rank 0 renders, the others wait); its grid into the TensorBoard log."""
        seconds = validation.run(at_step, accelerator)
        loss_log.rate.exclude(seconds)
        if validation.rendered_step == at_step:
            tensorboard.image(at_step, validation.directory / image_name(at_step))
        return seconds

    def measure_holdout(at_step: int) -> float:
        seconds = holdout.record(at_step, progress_log, tensorboard) if is_main else 0.0
        loss_log.rate.exclude(seconds)
        return seconds

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
            step_lr = session.lr_scheduler.get_last_lr()[0]  # the rate this step's update uses
            for micro in range(config.gradient_accumulation_steps):
                micro_step = (step - 1) * config.gradient_accumulation_steps + micro
                rows, size = schedule.rows(micro_step)
                batch = inputs.micro_batch(schedule.batch(micro_step), rows, size, micro_step)
                step_loss = step_loss + session.micro_step(batch) / config.gradient_accumulation_steps
            if session.ema is not None:
                session.ema.update(step)
            loss_log.add(step, step_loss, step_lr, session.grad_norm)
            clock.step_done()
            at_checkpoint = step % config.checkpointing_steps == 0 or step == config.max_train_steps
            stopping = config.stop_after_step is not None and step >= config.stop_after_step
            # The same steps on every rank: the gather in flush() is a collective.
            if step % log_every == 0 or at_checkpoint or stopping:
                loss_value = loss_log.flush()
            if at_checkpoint and is_main:
                assert loss_value is not None
                checkpoint(step, loss_value)
                tensorboard.flush()
            if validation.due(step) and step < config.max_train_steps:  # the last: after the loop
                clock.exclude(validate(step))
            if holdout_due(config.validation.every_n_steps, step) and step < config.max_train_steps:
                clock.exclude(measure_holdout(step))
            if step < config.max_train_steps and stop_requested():
                if loss_log.pending:  # a collective on every rank: stop_requested() agreed on the step
                    loss_value = loss_log.flush()
                if not at_checkpoint and is_main:
                    assert loss_value is not None
                    checkpoint(step, loss_value)
                    tensorboard.flush()
                accelerator.wait_for_everyone()
                raise TrainingInterrupted(
                    f"stopped after step {step} on {stop_signal.received or 'a signal to another rank'}; "
                    f"checkpoint {config.checkpoints_dir / f'{CHECKPOINT_PREFIX}{step}'} written, "
                    "the next pod resumes from it"
                )
            if stopping:
                accelerator.wait_for_everyone()
                raise TrainingInterrupted(f"stopped after step {step} (test hook)")
    except BaseException as error:
        tensorboard.close()  # what it holds of the steps up to the error
        if mlflow_run is not None:  # a resumed pod sets it RUNNING again
            status = "KILLED" if isinstance(error, TrainingInterrupted) else "FAILED"
            mlflow_run.finish(status, timeout=INTERRUPTED_FINISH_SECONDS)
        raise
    finally:
        stop_signal.restore()
        bar.close()

    try:  # the last validation, the export, the summary: a failure there fails the MLflow run too
        accelerator.wait_for_everyone()
        clock.finish()
        train_seconds = time.monotonic() - loss_log.started - validation.seconds
        validate(config.max_train_steps)  # unless a resumed run has it on disk
        measure_holdout(config.max_train_steps)
        tensorboard.close()
        if loss_value is None and resume is not None:
            loss_value = resume.state.get("loss")
        summary = _summary(
            session, dataset, resumed_from=first_step, loss_log=loss_log, loss_value=loss_value,
            seconds=time.monotonic() - started, train_seconds=train_seconds,
        )  # fmt: skip
        summary["training"] = training_block(clock, device, session.setup_peak_bytes, loss_value)
        summary["validation"] = validation.summary()
        summary["holdout"] = holdout.summary()
        if mlflow_run is not None:
            summary["tracking"] = mlflow_run.summary()
        if is_main:
            if config.export_dir is not None:
                from zthumb_trainer.export.adapter import AdapterInfo, export_adapter

                with ema_applied(session.ema):  # the EMA, when on, is what gets served
                    exported = adapter_state(unwrapped)
                info = AdapterInfo.of_run(config, dataset.dataset_hash)
                export_adapter(config.export_dir, exported, lora_configs(unwrapped), info)
                summary["adapter_dir"] = str(config.export_dir)
            (config.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            write_termination_message(summary)
        if mlflow_run is not None:
            log_run_artifacts(mlflow_run, config.export_dir, config.run_dir / "summary.json")
    except BaseException:
        if mlflow_run is not None:
            mlflow_run.finish("FAILED", timeout=INTERRUPTED_FINISH_SECONDS)
        raise
    if reporter and loss_value is not None:
        reporter.report(config.max_train_steps, config.max_train_steps, loss_value, 0, force=True)
    return summary


def _summary(
    session: TrainingSession,
    dataset: PreparedDataset,
    *,
    resumed_from: int,
    loss_log: LossLog,
    loss_value: float | None,
    seconds: float,
    train_seconds: float,
) -> dict[str, Any]:
    """What this process did, as ``summary.json`` and the termination message say it."""
    config, accelerator, device = session.config, session.accelerator, session.device
    summary: dict[str, Any] = {
        "run_name": config.run_name,
        "steps": config.max_train_steps,
        "resumed_from_step": resumed_from,
        "steps_this_run": loss_log.steps,
        "final_loss": loss_value,
        "mean_loss": loss_log.mean,
        "seconds": round(seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "steps_per_second": round(loss_log.steps / train_seconds, 4)
        if train_seconds > 0 and loss_log.steps
        else None,
        "latent_cache": "reused" if session.cache_hit else ("built" if config.cache_latents else "off"),
        "dataset_hash": dataset.dataset_hash,
        "images": len(dataset.entries),
        "mixed_precision": session.precision,
        "compile": f"{config.compile_scope}, {config.compile_mode}" if config.compile else False,
        "device": str(device),
        "gpus": accelerator.num_processes if device.type == "cuda" else 0,
        # Every process prints its summary: these say which one it was (rank 0 also exports).
        "process_index": accelerator.process_index,
        "world_size": accelerator.num_processes,
    }
    if device.type == "cuda":
        train_peak_bytes = torch.cuda.max_memory_allocated()
        summary["peak_gpu_memory_gb"] = round(max(session.setup_peak_bytes, train_peak_bytes) / 2**30, 3)
        summary["peak_train_gpu_memory_gb"] = round(train_peak_bytes / 2**30, 3)
    return summary
