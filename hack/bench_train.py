#!/usr/bin/env python
"""Training throughput benchmark (not a test): steps/s and peak memory of ``run_training``.

CPU, tiny model (default):
    .venv/bin/python hack/bench_train.py [--steps 20]
  64 and 128 px, latents cached vs re-encoded every step: steps/s and peak RSS.

GPU, real SDXL:
    python hack/bench_train.py --model /data/models/sd_xl_base_1.0.safetensors \
        --config /data/models/sd_xl_base_1.0-config [--steps 30]
  1024², batch 1, bf16, with and without gradient checkpointing: it/s and peak GPU memory.

Each configuration runs in its own process, so peak RSS / GPU memory belong to it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def _one(args: argparse.Namespace) -> None:
    """Run one configuration in this process and print its numbers as JSON."""
    from zthumb_trainer.dataset import prepare_dataset
    from zthumb_trainer.synthetic_dataset import write_synthetic_dataset
    from zthumb_trainer.train import TrainConfig, run_training

    work = Path(tempfile.mkdtemp(prefix="zthumb-bench-"))
    try:
        write_synthetic_dataset(work / "data", count=8, size=(args.resolution, args.resolution))
        run_dir = work / "run"
        prepare_dataset(work / "data", run_dir, args.resolution, trigger_word="zt")
        config = TrainConfig(
            run_dir=run_dir,
            base_model=Path(args.model),
            model_config=Path(args.config) if args.config else None,
            rank=16,
            alpha=16,
            learning_rate=1e-4,
            max_train_steps=args.steps,
            mixed_precision=args.mixed_precision,
            gradient_checkpointing=args.gradient_checkpointing,
            checkpointing_steps=10**9,  # only the final checkpoint, as a real run's last step
            snr_gamma=5.0,
            cache_latents=args.cache,
            progress_bar=False,
        )
        summary = run_training(config)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "steps_per_second": summary["steps_per_second"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if "peak_gpu_memory_gb" in summary:
        result["peak_gpu_memory_gb"] = summary["peak_gpu_memory_gb"]
    print("BENCH " + json.dumps(result))


def _spawn(args: argparse.Namespace, **overrides: Any) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--one", "--model", args.model, "--steps", str(args.steps)]
    if args.config:
        argv += ["--config", args.config]
    settings = {
        "resolution": args.resolution,
        "cache": True,
        "gradient_checkpointing": False,
        "mixed_precision": args.mixed_precision,
    } | overrides
    argv += ["--resolution", str(settings["resolution"]), "--mixed-precision", settings["mixed_precision"]]
    argv += ["--cache" if settings["cache"] else "--no-cache"]
    argv += [
        "--gradient-checkpointing" if settings["gradient_checkpointing"] else "--no-gradient-checkpointing"
    ]
    completed = subprocess.run(argv, capture_output=True, text=True, check=False, env=os.environ)
    line = next((ln for ln in completed.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"benchmark run failed:\n{completed.stderr[-3000:]}")
    return settings | json.loads(line.removeprefix("BENCH "))


def _table(rows: list[dict[str, Any]]) -> str:
    names = ("resolution", "cache", "gradient_checkpointing", "mixed_precision")
    names += ("steps_per_second", "peak_rss_mb", "peak_gpu_memory_gb")
    columns = [c for c in names if c in rows[0]]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="SDXL single file or diffusers dir (GPU mode); default: tiny model")
    parser.add_argument("--config", help="diffusers config dir for a single-file --model")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--mixed-precision", default=None)
    parser.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    gpu_mode = args.model is not None
    if args.model is None:
        from zthumb_trainer.tiny_model import build_tiny_model

        tiny = build_tiny_model(Path.home() / ".cache" / "zthumb" / "test-models" / "tiny-sdxl")
        args.model, args.config = str(tiny.single_file), str(tiny.diffusers_dir)
    args.steps = args.steps or (30 if gpu_mode else 20)
    args.mixed_precision = args.mixed_precision or ("bf16" if gpu_mode else "no")
    if args.one:
        _one(args)
        return

    if gpu_mode:
        rows = [_spawn(args, resolution=1024, gradient_checkpointing=gc) for gc in (False, True)]
    else:
        rows = [_spawn(args, resolution=res, cache=cache) for res in (64, 128) for cache in (True, False)]
    print(_table(rows))


if __name__ == "__main__":
    main()
