#!/usr/bin/env python3
"""GPU proof: full-size SDXL serving and training numbers, with no weights and no network.

Builds SDXL base 1.0 components with random weights from the published configs
(hack/gpu/sdxl_configs.py) in bf16 on CUDA and measures, with CUDA events after warm-up,
the median of repeats:

1. inference through the server's ``full`` backend at 1024², 30 steps, CFG on — with
   SDPA, with an unfused rank-16 LoRA, with it fused, and with ``torch.compile`` of
   the UNet when it compiles inside the time budget;
2. thumbnails: the turbo path (512², 1 step, guidance 0) through the server's app, alone and
   batched with 8 and 32 concurrent requests, and one at a time on a second app whose turbo UNet
   is compiled (``--thumbnail-compile``) (hack/gpu/gpu_bench_thumbnails.py);
3. adapter switching: one cached adapter, per-request alternation among 4 cached rank-16
   adapters (the server's adapter cache) and the naive load + unload per request (sections 1
   and 3: hack/gpu/gpu_bench_inference.py);
4. training with the trainer's own loop at 1024², rank 16, bf16, from cached latents and text
   embeddings: batch 1 and 4, gradient checkpointing and ``compile`` off and on, with it/s,
   samples/s, peak memory and model FLOP utilisation (hack/gpu/gpu_bench_training.py);
5. the server's compiled path (``ZTHUMB_COMPILE``, hack/gpu/gpu_bench_compiled.py): eager vs
   compiled base vs compiled + hot-swapped rank-16 LoRA, 4 adapters alternating (recompiles
   must stay 0), the switch cost, and first vs second start (warm inductor cache). It runs
   first and stops starting steps when ``--deadline-s`` comes near.

Sections 1, 2, 3 and 5 time their variants in interleaved rounds (hack/gpu/gpu_bench_rounds.py):
a ratio comes only from one call on one card, from the medians of the same rounds.
``--tiny`` runs the same code on the tiny fixture on the CPU (the test suite does),
so the script is known to work before a GPU is lent. Writes ``gpu_bench.json`` and
``gpu_bench.md`` to ``--out`` (default ``$OUT`` or ./outputs/gpu_bench) and prints
the table last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for package_root in ("contract", "images/zthumb", "images/trainer", "hack/lib", "hack/gpu"):
    sys.path.insert(0, str(REPO / package_root))


@dataclass
class Profile:
    """Sizes and repeat counts: full SDXL on a GPU, or the tiny fixture on a CPU."""

    tiny: bool
    width: int
    height: int
    steps: int
    guidance: float
    turbo_size: int
    switch_steps: int
    repeats: int
    switch_requests: int
    train_resolution: int
    train_steps: int
    train_warmup: int
    rounds: int  # interleaved rounds of sections 1 and 5 (hack/gpu/gpu_bench_rounds.py)
    thumbnail_rounds: int
    lora_rank: int = 16
    adapters: int = 4

    @classmethod
    def for_mode(cls, tiny: bool) -> Profile:
        if tiny:
            return cls(tiny, 64, 64, 4, 6.0, 32, 2, 2, 4, 64, 3, 1, 3, 2)
        return cls(tiny, 1024, 1024, 30, 6.0, 512, 4, 3, 8, 1024, 12, 3, 5, 6)


@dataclass
class Results:
    device: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Per interleaved section: the variants in the order they ran, and its printed table.
    orders: dict[str, list[str]] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)

    def add(self, section: str, variant: str, **numbers: Any) -> None:
        row = {"section": section, "variant": variant, **numbers}
        self.rows.append(row)
        print(json.dumps(row), flush=True)


class Timer:
    """Median wall time of a callable: CUDA events on a GPU, perf_counter on a CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def once(self, run: Callable[[], Any]) -> float:
        """Seconds of one call, the device's queued work included."""
        import torch

        if not self.cuda:
            began = time.perf_counter()
            run()
            return time.perf_counter() - began
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000

    def measure(self, run: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
        """One block of repeats: only where nothing is compared with it (a ratio needs Rounds)."""
        for _ in range(warmup):
            run()
        return [self.once(run) for _ in range(repeats)]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- model -----------------------------------------------------------------------------------


def build_model_dir(profile: Profile, root: Path, device: Any) -> Path:
    """A diffusers directory the backends and the trainer load, exactly as they would a real one."""
    if profile.tiny:
        from zthumb_trainer.tiny.tiny_model import build_tiny_model

        return build_tiny_model(root / "tiny").diffusers_dir

    import sdxl_configs
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
    from zthumb_trainer.tiny.tiny_model import write_tokenizer

    torch.manual_seed(0)
    # Random init straight on the GPU: building 2.6 B parameters on the CPU takes minutes.
    with torch.device(device):
        unet = UNet2DConditionModel(**sdxl_configs.UNET).to(torch.bfloat16)
        vae = AutoencoderKL(**sdxl_configs.VAE).to(torch.bfloat16)
        text_encoder = CLIPTextModel(CLIPTextConfig(**sdxl_configs.TEXT_ENCODER)).to(torch.bfloat16)
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**sdxl_configs.TEXT_ENCODER_2)).to(
            torch.bfloat16
        )
    # The weights are random, so any CLIP-style tokenizer of the right length will do.
    write_tokenizer(root / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**sdxl_configs.SCHEDULER),
    )
    parameters = sum(p.numel() for p in unet.parameters())
    print(f"built SDXL-size UNet with {parameters / 1e9:.3f} B parameters", flush=True)
    target = root / "sdxl"
    pipe.save_pretrained(target, safe_serialization=True)
    del pipe, unet, vae, text_encoder, text_encoder_2
    torch.cuda.empty_cache()
    return target


def write_random_adapters(model_dir: Path, lora_root: Path, count: int, rank: int, device: str) -> list[str]:
    """``count`` rank-``rank`` LoRAs in the diffusers layout the trainer exports."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", torch_dtype=torch.float32).to(
        device
    )
    names = []
    for index in range(count):
        name = f"bench-{index}"
        torch.manual_seed(100 + index)
        unet.add_adapter(
            LoraConfig(
                r=rank,
                lora_alpha=rank,
                init_lora_weights="gaussian",
                target_modules=["to_k", "to_q", "to_v", "to_out.0"],
            ),
            adapter_name=name,
        )
        with torch.no_grad():
            for module_name, param in unet.named_parameters():
                if f"lora_B.{name}" in module_name:
                    param.normal_(std=0.02)
        layers = {
            key: value.to("cpu", torch.bfloat16 if device == "cuda" else torch.float32)
            for key, value in convert_state_dict_to_diffusers(
                get_peft_model_state_dict(unet, adapter_name=name)
            ).items()
        }
        StableDiffusionXLPipeline.save_lora_weights(lora_root / name, unet_lora_layers=layers)
        unet.delete_adapters(name)
        names.append(name)
    del unet
    if device == "cuda":
        torch.cuda.empty_cache()
    return names


# --- sections --------------------------------------------------------------------------------


@dataclass
class Bench:
    """What every section needs: sizes, the saved model, adapters, the timer and the results."""

    profile: Profile
    model_dir: Path
    lora_root: Path
    adapters: list[str]
    timer: Timer
    results: Results
    work: Path


def release_gpu_memory(cuda: bool) -> None:
    """Return a finished section's pipeline memory, so the next section measures alone."""
    import gc

    import torch

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def bench_inference(bench: Bench, deadline: float, compile_unet: bool) -> None:
    """Sections 1 and 3: the full backend, LoRA variants and adapter switching (own module)."""
    import gpu_bench_inference

    gpu_bench_inference.bench_inference(bench, deadline, compile_unet)


def bench_thumbnails(bench: Bench, compile_mode: str, compile_cache: Path | None) -> None:
    """Section 2: turbo thumbnails through the server, alone, batched and compiled (own module)."""
    import gpu_bench_thumbnails

    gpu_bench_thumbnails.bench_thumbnails(bench, compile_mode, compile_cache)


def bench_training(bench: Bench, budget_s: float, variants: str) -> None:
    """Section 4: the trainer's loop, batch 1 and 4, checkpointing and compile variants (own module)."""
    import gpu_bench_training

    gpu_bench_training.bench_training(bench, budget_s, variants)


# --- report ----------------------------------------------------------------------------------


def markdown_table(results: Results) -> str:
    keys = ["section", "variant"]
    for row in results.rows:
        keys += [key for key in row if key not in keys]
    lines = [
        f"GPU benchmark on {results.device.get('name', '?')} ({results.device.get('torch', '?')})",
        "",
        "| " + " | ".join(keys) + " |",
        "| " + " | ".join("---" for _ in keys) + " |",
    ]
    for row in results.rows:
        lines.append("| " + " | ".join(str(row.get(key, "")) for key in keys) + " |")
    for table in results.tables:
        lines += ["", table]
    lines += [""] + [f"- {note}" for note in results.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="the tiny fixture on the CPU (CI)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/gpu_bench")))
    parser.add_argument(
        "--budget-s", type=float, default=180.0, help="skip torch.compile once this many seconds have passed"
    )
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--skip", action="append", default=[], choices=["compiled", "inference", "turbo", "training"]
    )
    parser.add_argument(
        "--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune"]
    )
    parser.add_argument(
        "--compile-lora", choices=["fuse", "slot"], default="fuse", help="ZTHUMB_COMPILE_LORA of section 5"
    )
    parser.add_argument("--slot-rank", type=int, default=64, help="ZTHUMB_COMPILE_MAX_RANK of section 5")
    parser.add_argument(
        "--deadline-s", type=float, default=450.0, help="section 5 starts no step that would end after this"
    )
    parser.add_argument(
        "--compile-cache",
        type=Path,
        help="one inductor cache for all of sections 2 and 5 (default: fresh, cold ones)",
    )
    parser.add_argument(
        "--thumbnail-compile",
        default="reduce-overhead",
        choices=["off", "default", "reduce-overhead", "max-autotune"],
        help="ZTHUMB_COMPILE of section 2's compiled turbo server (reduce-overhead: CUDA graphs); off: none",
    )
    parser.add_argument(
        "--training-budget-s", type=float, default=240.0, help="section 4 skips variants past this many s"
    )
    parser.add_argument(
        "--training-variants",
        default="all",
        choices=["all", "targets", "next"],
        help="section 4's variants: all, without checkpointing (targets), or those no GPU ran yet (next)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    cuda = torch.cuda.is_available() and not args.tiny
    if not args.tiny and not cuda:
        parser.error("no CUDA device: run with --tiny on a CPU")
    profile = Profile.for_mode(args.tiny)
    started = time.monotonic()
    results = Results(
        device={
            "name": torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or 'cpu'})",
            "torch": torch.__version__,
            "tiny": args.tiny,
        }
    )
    timer = Timer(cuda)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zthumb-gpu-bench-") as tmp:
        work = Path(tmp)
        model_dir = build_model_dir(profile, work, "cuda" if cuda else "cpu")
        results.add("setup", "model built and saved", seconds=round(time.monotonic() - started, 1))
        lora_root = work / "lora"
        adapters = (  # only the serving sections (1/3 and 5) need adapters
            write_random_adapters(
                model_dir, lora_root, profile.adapters, profile.lora_rank, "cuda" if cuda else "cpu"
            )
            if not {"inference", "compiled"} <= set(args.skip)
            else []
        )
        bench = Bench(profile, model_dir, lora_root, adapters, timer, results, work)
        if "compiled" not in args.skip:
            from gpu_bench_compiled import bench_compiled

            bench_compiled(
                bench,
                started + args.deadline_s,
                mode=args.compile_mode,
                slot_rank=args.slot_rank,
                shared_cache=args.compile_cache,
                lora=args.compile_lora,
            )
            release_gpu_memory(cuda)
        if "inference" not in args.skip:
            bench_inference(bench, started + args.budget_s, compile_unet=not args.no_compile and cuda)
            release_gpu_memory(cuda)
        if "turbo" not in args.skip:
            bench_thumbnails(bench, args.thumbnail_compile, args.compile_cache)
            release_gpu_memory(cuda)
        if "training" not in args.skip:
            bench_training(bench, args.training_budget_s, args.training_variants)
    results.add("total", "wall", seconds=round(time.monotonic() - started, 1))
    (args.out / "gpu_bench.json").write_text(json.dumps(results.__dict__, indent=2))
    table = markdown_table(results)
    (args.out / "gpu_bench.md").write_text(table + "\n")
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
