#!/usr/bin/env python
"""Training throughput benchmark (not a test): steps/s and peak memory of ``run_training``.

CPU, tiny model (default):
    .venv/bin/python hack/bench/bench_train.py [--steps 20] [--batch-sizes 1,4]
  64 and 128 px, batch 1 and 4, latents cached vs re-encoded every step: steps/s, samples/s and
  peak RSS.

GPU, real SDXL:
    python hack/bench/bench_train.py --model /data/models/sd_xl_base_1.0.safetensors \
        --config /data/models/sd_xl_base_1.0-config [--steps 30]
  1024², batch 1 and 4, bf16, with and without gradient checkpointing: it/s, samples/s and peak
  GPU memory. (hack/gpu/gpu_bench.py section 4 adds compile and the model FLOP utilisation.)

Each configuration runs in its own process, so peak RSS / GPU memory belong to it alone.

CPU, tiny model, against diffusers' ``train_text_to_image_lora_sdxl.py`` example (target: its steps/s):
    .venv/bin/python hack/bench/bench_train.py \
        --diffusers-example /tmp/diffusers-example/train_text_to_image_lora_sdxl.py \
        --example-pythonpath /tmp/example-site [--steps 40] [--repeats 2] [--batch-sizes 1,4]
  64 and 128 px, batch 1 and 4, rank 4, fp32, no gradient checkpointing, no validation, one checkpoint at
  the end, same LR / seed / min-SNR: steady-state steps/s (steps after the first --skip-steps, from
  per-step timestamps) of the example, ours with cached latents and ours re-encoding every step,
  interleaved, median of --repeats runs, with the ratios ours / example, samples/s (steps/s ×
  batch) and each configuration's peak RSS. The example runs unmodified
  from its own file (its progress bar is timed from outside); --example-pythonpath holds the packages
  it needs that the trainer does not (datasets, torchvision). See hack/bench/README-bench-train.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _one(args: argparse.Namespace) -> None:
    """Run one configuration in this process and print its numbers as JSON."""
    from zthumb_trainer.dataset.prepare import prepare_dataset
    from zthumb_trainer.tiny.synthetic_dataset import write_synthetic_dataset
    from zthumb_trainer.train.config import TrainConfig
    from zthumb_trainer.train.loop import run_training

    work = Path(tempfile.mkdtemp(prefix="zthumb-bench-"))
    try:
        write_synthetic_dataset(work / "data", count=8, size=(args.resolution, args.resolution))
        run_dir = work / "run"
        prepare_dataset(work / "data", run_dir, args.resolution, trigger_word="zt")
        config = TrainConfig(
            run_dir=run_dir,
            base_model=Path(args.model),
            model_config_dir=Path(args.config) if args.config else None,
            rank=args.rank,
            alpha=args.rank,
            learning_rate=1e-4,
            max_train_steps=args.steps,
            batch_size=args.batch_size,
            mixed_precision=args.mixed_precision,
            gradient_checkpointing=args.gradient_checkpointing,
            checkpointing_steps=10**9,  # only the final checkpoint, as a real run's last step
            snr_gamma=5.0,
            cache_latents=args.cache,
            progress_bar=False,
        )
        summary = run_training(config)
        progress = (run_dir / "progress.jsonl").read_text().splitlines()
        step_times = [json.loads(line)["time"] for line in progress]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "steps_per_second": summary["steps_per_second"],
        "steady_steps_per_second": _steady(step_times, args.skip_steps),
        "median_step_steps_per_second": _median_rate(step_times, args.skip_steps),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if "peak_gpu_memory_gb" in summary:
        result["peak_gpu_memory_gb"] = summary["peak_gpu_memory_gb"]
    print("BENCH " + json.dumps(result))


def _steady(step_times: list[float], skip: int) -> float | None:
    """Steps/s over the steps after the first ``skip``: times are taken as each step ends."""
    if len(step_times) <= skip + 1:
        return None
    start = step_times[skip - 1] if skip > 0 else step_times[0]
    steps = len(step_times) - (skip if skip > 0 else 1)
    return round(steps / (step_times[-1] - start), 4)


def _median_rate(step_times: list[float], skip: int) -> float | None:
    """1 / the median step time after the first ``skip`` steps: robust to a few stalled steps."""
    durations = [b - a for a, b in itertools.pairwise(step_times)][max(skip - 1, 0) :]
    return round(1 / statistics.median(durations), 4) if durations else None


def _spawn(args: argparse.Namespace, **overrides: Any) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--one", "--model", args.model, "--steps", str(args.steps)]
    argv += ["--rank", str(args.rank), "--skip-steps", str(args.skip_steps)]
    if args.config:
        argv += ["--config", args.config]
    settings = {
        "resolution": args.resolution,
        "batch": 1,
        "cache": True,
        "gradient_checkpointing": False,
        "mixed_precision": args.mixed_precision,
    } | overrides
    argv += ["--resolution", str(settings["resolution"]), "--mixed-precision", settings["mixed_precision"]]
    argv += ["--batch-size", str(settings["batch"])]
    argv += ["--cache" if settings["cache"] else "--no-cache"]
    argv += [
        "--gradient-checkpointing" if settings["gradient_checkpointing"] else "--no-gradient-checkpointing"
    ]
    completed = subprocess.run(argv, capture_output=True, text=True, check=False, env=os.environ)
    line = next((ln for ln in completed.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"benchmark run failed:\n{completed.stderr[-3000:]}")
    row = settings | json.loads(line.removeprefix("BENCH "))
    rate = row.get("steady_steps_per_second") or row["steps_per_second"]
    row["samples_per_second"] = round(rate * row["batch"], 3) if rate else None
    print("run " + json.dumps(row), file=sys.stderr, flush=True)
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    names = ("resolution", "batch", "cache", "gradient_checkpointing", "mixed_precision")
    names += ("steady_steps_per_second", "samples_per_second", "peak_rss_mb", "peak_gpu_memory_gb")
    columns = [c for c in names if c in rows[0]]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


# --- comparison with diffusers' train_text_to_image_lora_sdxl.py -------------------------------


def _one_example(args: argparse.Namespace) -> None:
    """Run the diffusers example in this process, timing its progress bar; print BENCH JSON.

    The script is loaded as a module (its ``main`` is not run on import) and its ``tqdm`` name is
    swapped for a subclass that records when each optimisation step ends; nothing else changes.
    """
    import importlib.util

    from tqdm.auto import tqdm
    from zthumb_trainer.tiny.synthetic_dataset import write_synthetic_dataset

    step_times: list[float] = []

    class TimedTqdm(tqdm):  # type: ignore[misc, valid-type]
        def update(self, n: float | None = 1) -> bool | None:
            step_times.append(time.time())
            return super().update(n)

    work = Path(tempfile.mkdtemp(prefix="zthumb-bench-example-"))
    try:
        data = work / "data"
        write_synthetic_dataset(data, count=8, size=(args.resolution, args.resolution))
        # The example reads an imagefolder: images plus metadata.jsonl (file_name, text).
        with (data / "metadata.jsonl").open("w", encoding="utf-8") as handle:
            for image in sorted(data.glob("*.png")):
                caption = image.with_suffix(".txt").read_text().strip()
                handle.write(json.dumps({"file_name": image.name, "text": f"zt, {caption}"}) + "\n")
        for caption_file in data.glob("*.txt"):
            caption_file.unlink()
        spec = importlib.util.spec_from_file_location("diffusers_example", args.diffusers_example)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.tqdm = TimedTqdm
        example_args = module.parse_args(
            [
                "--pretrained_model_name_or_path", args.model,
                "--train_data_dir", str(data),
                "--cache_dir", str(work / "hf-cache"),
                "--output_dir", str(work / "out"),
                "--resolution", str(args.resolution),
                "--train_batch_size", str(args.batch_size),
                "--rank", str(args.rank),
                "--mixed_precision", args.mixed_precision,
                "--learning_rate", "1e-4",
                "--lr_scheduler", "constant",
                "--max_train_steps", str(args.steps),
                "--dataloader_num_workers", "0",
                "--seed", "42",
                "--snr_gamma", "5.0",
                "--checkpointing_steps", str(10**9),
                "--report_to", "all",  # no tracker is installed: accelerate warns and logs nowhere
            ]
        )  # fmt: skip
        module.main(example_args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "steps_per_second": _steady(step_times, 0),
        "steady_steps_per_second": _steady(step_times, args.skip_steps),
        "median_step_steps_per_second": _median_rate(step_times, args.skip_steps),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print("BENCH " + json.dumps(result))


def _spawn_compare(args: argparse.Namespace, tool: str, resolution: int, batch: int) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps)]
    argv += ["--rank", str(args.rank), "--skip-steps", str(args.skip_steps), "--resolution", str(resolution)]
    argv += ["--batch-size", str(batch)]
    argv += ["--mixed-precision", args.mixed_precision]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if tool == "example":
        argv += ["--one-example", "--diffusers-example", args.diffusers_example]
        if args.example_pythonpath:
            # Only the example's process sees the extra packages; the trainer runs on the venv alone.
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (args.example_pythonpath, env.get("PYTHONPATH")) if p
            )
    else:
        argv += ["--one", "--cache" if tool == "ours-cached" else "--no-cache", "--no-gradient-checkpointing"]
    started = time.monotonic()
    completed = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    wall = round(time.monotonic() - started, 2)
    line = next((ln for ln in completed.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"{tool} at {resolution} px, batch {batch} failed:\n{completed.stderr[-3000:]}")
    row = {"tool": tool, "resolution": resolution, "batch": batch, "wall_seconds": wall} | json.loads(
        line.removeprefix("BENCH ")
    )
    print("run " + json.dumps(row), file=sys.stderr, flush=True)
    return row


def _compare(args: argparse.Namespace) -> None:
    tools = ("example", "ours-cached", "ours-reencode")
    configurations = [(resolution, batch) for batch in args.batch_sizes for resolution in (64, 128)]
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for resolution, batch in configurations:
            # Rotate the order each repeat so that no tool always runs first after a change of size.
            order = tools[repeat % 3 :] + tools[: repeat % 3]
            runs += [_spawn_compare(args, tool, resolution, batch) for tool in order]

    def median(tool: str, resolution: int, batch: int, key: str) -> float:
        return statistics.median(
            r[key]
            for r in runs
            if r["tool"] == tool and r["resolution"] == resolution and r["batch"] == batch
        )

    print(
        f"steady-state steps/s (steps {args.skip_steps + 1}..{args.steps}), median of {args.repeats} runs; "
        f"rank {args.rank}, mixed precision {args.mixed_precision}, no gradient checkpointing, "
        f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}"
    )
    lines = [
        "| measure | resolution | batch | example | ours, cached latents | ratio "
        "| ours, re-encoding | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    measures = {"steady_steps_per_second": "steps / time", "median_step_steps_per_second": "1 / median step"}
    for key, label in measures.items():
        for resolution, batch in configurations:
            example = median("example", resolution, batch, key)
            cached = median("ours-cached", resolution, batch, key)
            reencode = median("ours-reencode", resolution, batch, key)
            lines.append(
                f"| {label} | {resolution} | {batch} | {example:.1f} | {cached:.1f} "
                f"| {cached / example:.2f}x | {reencode:.1f} | {reencode / example:.2f}x |"
            )
    print("\n".join(lines))
    print("\nsamples/s (steady steps/s × batch) and peak RSS (MB), medians:")
    lines = [
        "| resolution | batch | example samples/s | ours cached samples/s | ours re-encoding samples/s "
        "| example RSS | ours cached RSS | ours re-encoding RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for resolution, batch in configurations:
        rates = [median(tool, resolution, batch, "steady_steps_per_second") * batch for tool in tools]
        rss = [median(tool, resolution, batch, "peak_rss_mb") for tool in tools]
        lines.append(
            f"| {resolution} | {batch} | "
            + " | ".join(f"{rate:.1f}" for rate in rates)
            + " | "
            + " | ".join(f"{value:.0f}" for value in rss)
            + " |"
        )
    print("\n".join(lines))
    print("\nper run (steady steps/s; process wall s incl. start-up, caching and the final save):")
    for tool in tools:
        for resolution, batch in configurations:
            values = [
                r for r in runs if r["tool"] == tool and r["resolution"] == resolution and r["batch"] == batch
            ]
            steady = ", ".join(f"{r['steady_steps_per_second']:.3f}" for r in values)
            walls = ", ".join(f"{r['wall_seconds']:.1f}" for r in values)
            print(f"  {tool:14} {resolution:4} px batch {batch}: {steady}  (wall {walls})")


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
    parser.add_argument(
        "--rank", type=int, default=None, help="LoRA rank (default 16; 4 with --diffusers-example)"
    )
    parser.add_argument("--skip-steps", type=int, default=5, help="steps left out of the steady-state rate")
    parser.add_argument(
        "--diffusers-example", help="path to diffusers' train_text_to_image_lora_sdxl.py: compare with it"
    )
    parser.add_argument(
        "--example-pythonpath", help="extra PYTHONPATH for the example (datasets, torchvision)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration (comparison)")
    parser.add_argument("--batch-size", type=int, default=1, help=argparse.SUPPRESS)  # one run's
    parser.add_argument(
        "--batch-sizes",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 4],
        help="batch sizes to measure, comma-separated (default 1,4)",
    )
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one-example", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    compare = args.diffusers_example is not None
    gpu_mode = args.model is not None and not compare
    if args.model is None:
        from zthumb_trainer.tiny.tiny_model import build_tiny_model

        tiny = build_tiny_model(Path.home() / ".cache" / "zthumb" / "test-models" / "tiny-sdxl")
        # The example loads a diffusers directory; the comparison gives ours the same one.
        args.model = str(tiny.diffusers_dir) if compare else str(tiny.single_file)
        args.config = None if compare else str(tiny.diffusers_dir)
    args.steps = args.steps or (40 if compare else 30 if gpu_mode else 20)
    args.rank = args.rank or (4 if compare else 16)
    args.mixed_precision = args.mixed_precision or ("bf16" if gpu_mode else "no")
    if args.one:
        _one(args)
        return
    if args.one_example:
        _one_example(args)
        return
    if compare:
        _compare(args)
        return

    if gpu_mode:
        rows = [
            _spawn(args, resolution=1024, batch=batch, gradient_checkpointing=gc)
            for batch in args.batch_sizes
            for gc in (False, True)
        ]
    else:
        rows = [
            _spawn(args, resolution=res, batch=batch, cache=cache)
            for batch in args.batch_sizes
            for res in (64, 128)
            for cache in (True, False)
        ]
    print(_table(rows))


if __name__ == "__main__":
    main()
