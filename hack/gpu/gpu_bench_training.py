"""Section 4 of hack/gpu/gpu_bench.py: the trainer's own loop (``run_training``), the batch-1
throughput variants.

At 1024² (64 px with ``--tiny``), rank 16, bf16 (fp32 on the CPU), from cached latents and text
embeddings: batch 1 and 4, gradient checkpointing off and on, ``compile`` off, of the transformer
blocks or of the whole UNet, with inductor's default mode or CUDA graphs (``reduce-overhead``).
``--training-variants`` picks a list (``VARIANT_SETS``): ``next`` is what no GPU has run yet. Per variant:
it/s and samples/s over the timed steps (after the warm-up steps, which take any compilation),
the training loop's peak GPU memory, and the model FLOP utilisation: FLOPs of one training step
(forward + backward of the LoRA-wrapped UNet, counted once with ``FlopCounterMode`` on the meta
device, so it costs no GPU time; model FLOPs, so checkpointing's recomputation is not counted)
× it/s ÷ the card's dense bf16 peak.

The variants run in the order of their targets (batch 1 and 4 without checkpointing, eager
then compiled, then with checkpointing) and each is skipped, with a note, when its estimated
duration would end past the section's budget. A variant that fails is noted and the rest go on.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECTION = "4 training"

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, matched on the device name in this order.
PEAKS: tuple[tuple[tuple[str, ...], float, str], ...] = (
    (("H100", "PCIE"), 756.0, "H100 PCIe dense bf16 peak 756 TFLOP/s"),
    (("H100",), 989.0, "H100 SXM dense bf16 peak 989 TFLOP/s"),
    (("H200",), 989.0, "H200 dense bf16 peak 989 TFLOP/s (the H100's compute, more memory)"),
    (("A100",), 312.0, "A100 dense bf16 peak 312 TFLOP/s"),
)


def peak_tflops(device_name: str) -> tuple[float | None, str]:
    """The dense bf16 peak for this device name and the sentence that says which one was used."""
    upper = device_name.upper()
    for words, peak, label in PEAKS:
        if all(word in upper for word in words):
            return peak, label
    return None, f"no bf16 peak known for {device_name!r}: MFU not computed"


@dataclass(frozen=True)
class Variant:
    batch: int
    checkpointing: bool
    compile_scope: str | None = None  # None: eager; else spec.training.compileScope
    compile_mode: str = "default"  # spec.training.compileMode

    @property
    def name(self) -> str:
        compiled = "off" if self.compile_scope is None else self.compile_scope
        if self.compile_scope is not None and self.compile_mode != "default":
            compiled += f" {self.compile_mode}"
        return (
            f"batch {self.batch}, checkpointing {'on' if self.checkpointing else 'off'}, compile {compiled}"
        )


# Measured on an H100 (hack/gpu/README-gpu.md): eager and compiled transformer blocks. Batch 1 stayed at
# 2.35 it/s (target 3) while batch 4 met its target, so a batch-1 step is bound by kernel launches,
# not by the GPU: the next variants compile the whole UNet and replay CUDA graphs.
MEASURED = [
    Variant(1, False),
    Variant(4, False),
    Variant(1, False, "blocks"),
    Variant(4, False, "blocks"),
]
NEXT = [
    Variant(1, False, "unet", "reduce-overhead"),
    Variant(1, False, "blocks", "reduce-overhead"),
    Variant(1, False, "unet"),
    Variant(4, False, "unet", "reduce-overhead"),
]
CHECKPOINTING = [
    Variant(1, True),
    Variant(4, True),
    Variant(1, True, "blocks"),
    Variant(4, True, "blocks"),
]
# The targets first (batch 1 and 4 without checkpointing), then with checkpointing.
VARIANT_SETS = {"all": MEASURED + NEXT + CHECKPOINTING, "next": NEXT, "targets": MEASURED + NEXT}


def training_step_flops(model_dir: Path, batch: int, resolution: int, rank: int) -> int:
    """FLOPs of one training step: forward + backward of the LoRA-wrapped UNet, on the meta device.

    The UNet is the saved one's config with the trainer's LoRA (same target modules), frozen base,
    trainable LoRA; the loss is the trainer's MSE. No memory is allocated and nothing runs on a GPU.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from torch.utils.flop_counter import FlopCounterMode
    from zthumb_trainer.train.model_setup import UNET_TARGET_MODULES

    config = json.loads((model_dir / "unet" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config).to(torch.bfloat16)
        unet.requires_grad_(False)
        unet.add_adapter(
            LoraConfig(
                r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=UNET_TARGET_MODULES
            )
        )
        for parameter in unet.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
        latent = resolution // 8
        sample = torch.empty(batch, unet.config.in_channels, latent, latent, dtype=torch.bfloat16)
        timesteps = torch.zeros(batch, dtype=torch.long)
        text_dim = unet.config.cross_attention_dim
        embeds = torch.empty(batch, 77, text_dim, dtype=torch.bfloat16)
        time_dims = 6 * unet.config.addition_time_embed_dim
        pooled_dim = unet.config.projection_class_embeddings_input_dim - time_dims
        added = {
            "text_embeds": torch.empty(batch, pooled_dim, dtype=torch.bfloat16),
            "time_ids": torch.zeros(batch, 6, dtype=torch.long),
        }
        with FlopCounterMode(display=False) as counter:
            prediction = unet(sample, timesteps, embeds, added_cond_kwargs=added, return_dict=False)[0]
            F.mse_loss(prediction.float(), torch.empty_like(prediction, dtype=torch.float32)).backward()
    return int(counter.get_total_flops())


def _steady_rate(run_dir: Path, warmup: int) -> tuple[float, int, float]:
    """(it/s, timed steps, timed seconds) from progress.jsonl: lines written at each loss read-back.

    A line's time is when its loss reached the host (after a synchronisation on a GPU), so the
    time of step ``warmup``'s line to the last line's is exactly the timed steps' wall time.
    """
    times = [json.loads(line)["time"] for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    start = times[warmup - 1] if warmup > 0 else times[0]
    steps = len(times) - max(warmup, 1)
    seconds = times[-1] - start
    return (steps / seconds if seconds > 0 else float("nan")), steps, seconds


def bench_training(bench: Any, budget_s: float, variants: str = "all") -> None:
    """Run the variants of section 4 (``bench`` is gpu_bench's ``Bench``) within ``budget_s`` seconds:
    ``variants`` names a list of ``VARIANT_SETS``."""
    import torch
    from zthumb_trainer.dataset.prepare import prepare_dataset
    from zthumb_trainer.tiny.synthetic_dataset import write_synthetic_dataset
    from zthumb_trainer.train.config import TrainConfig
    from zthumb_trainer.train.loop import run_training

    profile, work, results, cuda = bench.profile, bench.work, bench.results, bench.timer.cuda
    started = time.monotonic()
    deadline = started + budget_s
    resolution, warmup = profile.train_resolution, profile.train_warmup
    steps = profile.train_steps
    device_name = results.device.get("name", "")
    peak, peak_label = peak_tflops(device_name) if cuda else (None, "CPU: no bf16 peak, MFU not computed")
    results.notes.append(f"section 4 MFU: {peak_label}")

    source = work / "train-dataset"
    write_synthetic_dataset(source, count=8, size=(resolution, resolution))
    template = work / "train-template"
    prepare_dataset(source, template, resolution=resolution, trigger_word="zthumb")

    # Estimates before a variant of the kind has run: a GPU variant loads SDXL (seconds), a compiled
    # one compiles the transformer blocks for its shapes (about a minute) or the whole UNet, forward
    # and backward (a few minutes).
    estimate = (
        {None: 40.0, "blocks": 120.0, "unet": 240.0} if cuda else {None: 20.0, "blocks": 40.0, "unet": 60.0}
    )
    measured: dict[str | None, float] = {}
    cache_from: Path | None = None
    for index, variant in enumerate(VARIANT_SETS[variants]):
        expected = measured.get(variant.compile_scope, estimate[variant.compile_scope])
        left = deadline - time.monotonic()
        if expected > left:
            results.notes.append(
                f"section 4: skipped '{variant.name}': about {expected:.0f} s expected, {left:.0f} s of the "
                f"section's {budget_s:.0f} s budget left"
            )
            continue
        run_dir = work / f"train-{index}"
        shutil.copytree(template / "dataset", run_dir / "dataset")
        if cache_from is not None and (cache_from / "cache").is_dir():
            shutil.copytree(cache_from / "cache", run_dir / "cache")  # latents + embeddings: same key
        began = time.monotonic()
        try:
            summary = run_training(
                TrainConfig(
                    run_dir=run_dir,
                    base_model=bench.model_dir,
                    rank=profile.lora_rank,
                    alpha=profile.lora_rank,
                    max_train_steps=steps,
                    batch_size=variant.batch,
                    mixed_precision="bf16" if cuda else "no",
                    gradient_checkpointing=variant.checkpointing,
                    compile=variant.compile_scope is not None,
                    compile_scope=variant.compile_scope or "blocks",
                    compile_mode=variant.compile_mode,
                    compile_backend="inductor" if cuda else "aot_eager",
                    checkpointing_steps=10**6,
                    log_every_steps=warmup,
                    progress_bar=False,
                )
            )
            rate, timed_steps, timed_seconds = _steady_rate(run_dir, warmup)
        except Exception as error:  # one failed variant must not cost the others
            traceback.print_exc()
            results.notes.append(f"section 4: '{variant.name}' failed: {type(error).__name__}: {error}"[:400])
            continue
        finally:
            if cuda:
                import gc

                gc.collect()
                torch.cuda.empty_cache()
        wall = time.monotonic() - began
        measured[variant.compile_scope] = max(measured.get(variant.compile_scope, 0.0), wall)
        cache_from = run_dir
        row: dict[str, Any] = {
            "it_per_s": round(rate, 3),
            "samples_per_s": round(rate * variant.batch, 3),
            "peak_gpu_gb": summary.get("peak_train_gpu_memory_gb"),
            "resolution": resolution,
            "batch": variant.batch,
            "rank": profile.lora_rank,
            "timed_steps": timed_steps,
            "timed_s": round(timed_seconds, 2),
            "loop_s": summary.get("train_seconds"),
            "wall_s": round(wall, 1),
        }
        results.add(SECTION, variant.name, **row)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)

    rows = [r for r in results.rows if r["section"] == SECTION]
    # After the timings, so that a slow count costs none of their budget. Every op of the UNet is
    # per sample, so a step's FLOPs are batch × batch 1's (checked: 56.75 = 4 × 14.19 TFLOP at 1024²).
    counted = time.monotonic()
    try:
        flops_1 = training_step_flops(bench.model_dir, 1, resolution, profile.lora_rank)
    except Exception as error:  # a missing count must not cost the timings
        results.notes.append(f"section 4: FLOP count failed: {type(error).__name__}: {error}"[:400])
    else:
        results.notes.append(
            f"section 4 FLOPs per training step: {flops_1 / 1e9:.2f} GFLOP × batch (model FLOPs: forward + "
            "backward of the LoRA UNet counted by FlopCounterMode on the meta device; checkpointing's "
            "recomputation not counted)"
        )
        for row in rows:
            row["gflop_per_step"] = round(flops_1 * row["batch"] / 1e9, 2)
            if peak:
                row["mfu_pct"] = round(100 * flops_1 * row["batch"] * row["it_per_s"] / (peak * 1e12), 2)
        print(f"section 4: FLOPs counted in {time.monotonic() - counted:.1f} s", flush=True)
    for batch, key, target, unit in ((1, "it_per_s", 3.0, "it/s"), (4, "samples_per_s", 10.0, "samples/s")):
        candidates = [r for r in rows if r["batch"] == batch and "checkpointing off" in r["variant"]]
        if candidates:
            best = max(candidates, key=lambda r: r[key])
            verdict = ("met" if best[key] >= target else "NOT met") + (
                "" if cuda else " (tiny CPU run: no GPU claim)"
            )
            results.notes.append(
                f"section 4 target >= {target:g} {unit} at batch {batch} without checkpointing: {verdict} "
                f"(best {best[key]} {unit}, {best['variant']})"
            )
    print(f"section 4: {time.monotonic() - started:.1f} s of {budget_s:.0f} s", flush=True)
