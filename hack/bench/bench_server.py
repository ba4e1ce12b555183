#!/usr/bin/env python3
"""Benchmark per-request LoRA switching in the ZThumb server core (not a test).

Runs the server's own Engine (the code behind POST /generate, minus HTTP) and reports
p50/p95 latency for:

  (a)  no adapter                      (lora_scale 0: LoRA layers disabled)
  (b)  the env-default adapter         (Z_LORA_PATH, pinned in the cache)
  (c2) per-request alternation among 2 cached adapters
  (c8) per-request alternation among 8 cached adapters
  (d)  the naive way: load_lora_weights + unload_lora_weights around every request
  (e2) several adapters per request (``loras``): 2 cached adapters combined, a different
       pair every request
  (e4) the same with 4 adapters (ZTHUMB_MAX_LORAS_PER_REQUEST's default)

then the ratios (c)/(b) (target <= 1.05), (cached switch added cost) / (naive
load+unload of the same adapter) (target <= 5%), (e)/(b) (what combining adapters costs),
the UNet weight bytes per backend (GGUF: quantized Linear weights must take <= 30% of
their fp32 bytes), and what encoding the answer's image costs: PNG, JPEG and WebP at the server's
settings and the alternatives, 512x512, with output bytes (``bench_image_encoding.py``;
``--encoding-only`` prints just that table). Every request has the same prompt, so after the
first one its embeddings come from the prompt cache in every row alike.

``--compile MODE`` also loads a compiled engine (ZTHUMB_COMPILE=MODE, inductor; adapters as
``--compile-lora`` says: ``fuse``, merged into the weights, the default, or ``slot``) and times rows
(a), (b), (c2), (c8) on it in the same interleaved loop (and (e2), (e4) with ``fuse``), with the
ratio compiled/eager per row and the compiled path's target ratio: a LoRA over the compiled base, (b)/(a) and
(c2)/(a) on the compiled engine (target <= 1.10). Its inductor cache lives beside the tiny model,
so only the first run pays the compile.

Default: the tiny SDXL pipeline on the CPU, 64x64, 2 steps. On a GPU:
  hack/bench/bench_server.py --model /models/sd_xl_base_1.0.safetensors --config /models/sdxl-config \
      --size 1024 --steps 20 --device cuda
(adapters: --adapters DIR with *.safetensors / diffusers dirs; else random rank-16 ones are made.)
``--tiny``: small counts and no GGUF conversion, well under a minute on a CPU (for CI).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module, when loaded by path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))  # bench_stats (hack/lib)

from bench_image_encoding import print_table as print_encoding_table
from bench_stats import percentile


def make_adapters(unet_dir: Path, root: Path, count: int, rank: int) -> list[str]:
    from zthumb.testing import write_random_adapters

    names = [f"bench_{index}" for index in range(count)]
    return write_random_adapters(unet_dir, root, names, first_seed=100, rank=rank)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="diffusers dir or single-file SDXL (default: tiny model)")
    parser.add_argument("--config", type=Path, help="diffusers config dir for a single-file model")
    parser.add_argument("--adapters", type=Path, help="a LoRA root with at least 8 adapters")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--requests", type=int, default=24, help="timed requests per scenario (about)")
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=16, help="untimed requests per row first")
    parser.add_argument("--skip-gguf", action="store_true")
    parser.add_argument(
        "--compile",
        choices=["default", "reduce-overhead", "max-autotune"],
        help="also time a compiled engine (ZTHUMB_COMPILE) against the eager one",
    )
    parser.add_argument(
        "--compile-lora", choices=["fuse", "slot"], default="fuse", help="ZTHUMB_COMPILE_LORA of --compile"
    )
    parser.add_argument("--tiny", action="store_true", help="small counts, no GGUF: seconds, for CI")
    parser.add_argument(
        "--encoding-size", type=int, default=512, help="side of the image the encoding table encodes"
    )
    parser.add_argument(
        "--encoding-rounds", type=int, default=40, help="interleaved rounds of the encoding table"
    )
    parser.add_argument(
        "--encoding-only", action="store_true", help="print only the image encoding table (no model)"
    )
    parser.add_argument(
        "--clock",
        choices=["auto", "wall", "cpu"],
        default="auto",
        help="auto: process CPU time on CPU (robust to other load on a shared machine), wall on CUDA",
    )
    args = parser.parse_args(argv)
    if args.tiny:
        args.requests, args.warmup, args.skip_gguf = 4, 2, True
        args.encoding_size, args.encoding_rounds = 64, 2
    if args.encoding_only:
        print_encoding_table(args.encoding_size, args.encoding_rounds)
        return 0

    from zthumb.backends import FullBackend
    from zthumb.backends.base import resolve_device, resolve_dtype
    from zthumb.engine import Engine
    from zthumb.protocol import GenerateRequest
    from zthumb.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="zthumb-bench-"))
    if args.model is None:
        from zthumb_trainer.tiny.tiny_model import build_tiny_model

        tiny = build_tiny_model(Path.home() / ".cache" / "zthumb" / "test-models" / "tiny-sdxl")
        model, config = tiny.diffusers_dir, tiny.diffusers_dir
        size, steps, rank = args.size or 64, args.steps or 2, args.rank or 4
        label = "tiny SDXL (random weights)"
    else:
        model, config = args.model, args.config or (args.model if args.model.is_dir() else None)
        size, steps, rank = args.size or 1024, args.steps or 20, args.rank or 16
        label = str(args.model)
    if args.adapters:
        lora_root = args.adapters
        names = sorted(p.name for p in lora_root.iterdir() if p.is_dir() or p.suffix == ".safetensors")[:8]
    else:
        if config is None:
            parser.error("--config is needed to make random adapters for a single-file model")
        lora_root = work / "lora"
        names = make_adapters(Path(config) / "unet", lora_root, 8, rank)
    if len(names) < 8:
        parser.error("need 8 adapters")

    settings = Settings(
        model_path=model,
        model_config_dir=config,
        lora_root=lora_root,
        lora_path=names[0],
        lora_scale=0.8,
        lora_cache_size=8,
        device=args.device,
        dtype=args.dtype,
        default_width=size,
        default_height=size,
        default_steps=steps,
        min_size=8,
        max_size=4096,
    )
    engine = Engine(settings)
    engine.load_all()
    if not engine.ready:
        print("engine not ready:", engine.readiness().error, file=sys.stderr)
        return 1
    backend = engine.backends["full"]
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)

    use_cpu_clock = args.clock == "cpu" or (args.clock == "auto" and device.type != "cuda")
    clock = time.process_time if use_cpu_clock else time.perf_counter

    def sync() -> None:
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize()

    def run(**fields: Any) -> tuple[float, float]:
        return run_on(engine, **fields)

    def run_on(engine: Engine, **fields: Any) -> tuple[float, float]:
        """One request through prepare + execute; returns (total, adapter step) seconds."""
        request = GenerateRequest(prompt="a photo of z", seed=1, **fields)
        started = clock()
        plan = engine.prepare(request)
        adapter_started = clock()
        engine.backends["full"].apply_adapters(plan.adapters)  # what execute does first
        sync()
        adapter_seconds = clock() - adapter_started
        engine.execute(plan)  # applies again (a no-op now) and generates
        sync()
        return clock() - started, adapter_seconds

    def several(i: int, count: int) -> list[dict[str, Any]]:
        """``count`` of the 8 cached adapters, a different set every request, scales 0.8..0.5."""
        return [{"path": names[(i + k) % 8], "scale": 0.8 - 0.1 * k} for k in range(count)]

    compiled: Engine | None = None
    if args.compile:
        compiled_settings = settings.model_copy(
            update={
                "compile": args.compile,
                "compile_lora": args.compile_lora,
                "compile_max_rank": rank,
                "compile_cache_dir": Path.home()
                / ".cache"
                / "zthumb"
                / "test-models"
                / "torchinductor-bench",
            }
        )
        started = time.perf_counter()
        compiled = Engine(compiled_settings)
        compiled.load_all()
        if not compiled.ready:
            print("compiled engine not ready:", compiled.readiness().error, file=sys.stderr)
            return 1
        print(
            f"compiled engine ({args.compile}, {args.compile_lora}) loaded in "
            f"{time.perf_counter() - started:.1f} s"
        )

    # (d) naive: a separate pipeline, the adapter loaded and unloaded around every request.
    from zthumb.backends import GenerationParams

    naive = FullBackend(settings, device, dtype)
    params = GenerationParams("a photo of z", None, size, size, steps, 6.0, 1, 1)
    file = engine.files.ref(names[1]).file

    def run_naive() -> tuple[float, float]:
        started = clock()
        naive.pipe.load_lora_weights(str(file), adapter_name="naive")
        naive.pipe.set_adapters(["naive"], [0.8])
        sync()
        loaded = clock()
        naive.generate(params)
        sync()
        generated = clock()
        naive.pipe.unload_lora_weights()
        sync()
        done = clock()
        return done - started, (loaded - started) + (done - generated)

    rows: dict[str, Any] = {
        "(a) no adapter": lambda i: run(lora_scale=0),
        "(b) env-default adapter": lambda i: run(),
        "(c2) alternate 2 cached": lambda i: run(lora_path=names[i % 2], lora_scale=0.8),
        "(c8) alternate 8 cached": lambda i: run(lora_path=names[i % 8], lora_scale=0.8),
        "(d) naive load+unload": lambda i: run_naive(),
        "(e2) 2 adapters combined": lambda i: run(loras=several(i, 2)),
        "(e4) 4 adapters combined": lambda i: run(loras=several(i, 4)),
    }
    if compiled is not None:
        on = compiled
        rows |= {
            "(a) compiled": lambda i: run_on(on, lora_scale=0),
            "(b) compiled": lambda i: run_on(on),
            "(c2) compiled": lambda i: run_on(on, lora_path=names[i % 2], lora_scale=0.8),
            "(c8) compiled": lambda i: run_on(on, lora_path=names[i % 8], lora_scale=0.8),
        }
        if args.compile_lora == "fuse":  # a slot holds one adapter per request
            rows |= {
                "(e2) compiled": lambda i: run_on(on, loras=several(i, 2)),
                "(e4) compiled": lambda i: run_on(on, loras=several(i, 4)),
            }
    # All 8 adapters resident first (in every engine), so (c8)/(e) time cached switches only.
    for eng in [engine] if compiled is None else [engine, compiled]:
        for name in names:
            eng.backends["full"].apply_adapter(eng.files.ref(name), 0.8)
    for i in range(args.warmup):
        for row in rows.values():
            row(i)
    # Two or three pipelines make a large object graph: a full collection of it paused one request
    # in ~50 by 0.35 s on the tiny model (it showed up as the p95 of whichever row allocates the most
    # Python objects). Frozen, a collection walks only what the timed requests allocate.
    gc.collect()
    gc.freeze()
    # Interleaved blocks, so background load on a shared machine hits every row alike; the
    # first request of a block (the transition from the previous row) is not recorded.
    totals: dict[str, list[float]] = {name: [] for name in rows}
    adapter_steps: dict[str, list[float]] = {name: [] for name in rows}
    block = 5
    for round_index in range(max(1, -(-args.requests // (block - 1)))):
        for name, row in rows.items():
            for j in range(block):
                total, adapter_step = row(round_index * block + j)
                if j:
                    totals[name].append(total)
                    adapter_steps[name].append(adapter_step)

    clock_name = "process CPU time" if use_cpu_clock else "wall clock"
    print(f"\nmodel: {label}; device {device}, dtype {str(dtype).removeprefix('torch.')}; ")
    print(f"{size}x{size}, {steps} steps; {args.requests} timed requests per row; {clock_name}\n")
    print(f"| {'scenario':<26} | {'p50 ms':>8} | {'p95 ms':>8} | {'adapter step p50 ms':>19} |")
    print(f"|{'-' * 28}|{'-' * 10}|{'-' * 10}|{'-' * 21}|")
    p50: dict[str, float] = {}
    step50: dict[str, float] = {}
    for name in rows:
        p50[name] = statistics.median(totals[name])
        step50[name] = statistics.median(adapter_steps[name])
        p95 = percentile(totals[name], 95)
        print(f"| {name:<26} | {p50[name] * 1000:8.1f} | {p95 * 1000:8.1f} | {step50[name] * 1000:19.2f} |")
    naive_cost = step50["(d) naive load+unload"]
    b = p50["(b) env-default adapter"]
    print("\n(d)'s adapter step is its load + set_adapters + unload_lora_weights.")
    for key in ("(c2) alternate 2 cached", "(c8) alternate 8 cached"):
        added = max(0.0, step50[key] - step50["(b) env-default adapter"])
        print(
            f"{key}: (c)/(b) = {p50[key] / b:.3f} (target <= 1.05); cached switch adds "
            f"{added * 1000:.2f} ms = {added / naive_cost:.1%} of naive load+unload (target <= 5%)"
        )
    for key in ("(e2) 2 adapters combined", "(e4) 4 adapters combined"):
        print(
            f"{key}: (e)/(b) = {p50[key] / b:.3f}; adapter step {step50[key] * 1000:.2f} ms "
            f"vs {step50['(b) env-default adapter'] * 1000:.2f} ms for one resident adapter"
        )
    if compiled is not None:
        for key in rows:
            twin = key.split(" ", 1)[0] + " compiled"
            if twin in rows and twin != key:
                print(f"{twin}: compiled/eager p50 = {p50[twin] / p50[key]:.3f}")
        base = p50["(a) compiled"]
        # With a slot, (a) is the slot's graph at scale 0: its LoRA matmuls run there too.
        over = "the compiled base" if args.compile_lora == "fuse" else "the slot at scale 0 (not the base)"
        for key in ("(b) compiled", "(c2) compiled"):
            print(f"{key}: LoRA over {over} p50 = {p50[key] / base:.3f} (target <= 1.10)")
        full = compiled.backends["full"]
        recompiles = (
            compiled.metrics.registry.get_sample_value("zthumb_compile_recompiles_total", {"backend": "full"})
            or 0.0
        )
        print(f"compiled: {recompiles:.0f} recompiles after warm-up (target 0)")
        if full.compiled is not None:
            print(f"compiled: startup compile + first generation {full.compiled.compile_seconds:.1f} s")

    # UNet weight bytes per backend.
    print("\n| backend | UNet weight bytes | quantized Linear bytes | their fp32 bytes | ratio |")
    print("|---|---|---|---|---|")
    full_bytes = backend.unet_weight_bytes
    print(f"| full ({str(dtype).removeprefix('torch.')}) | {full_bytes['unet']:,} | - | - | - |")
    if not args.skip_gguf:
        from zthumb.backends import GGUFBackend
        from zthumb.gguf_convert import convert

        gguf_file = work / "unet.gguf"
        convert(model if Path(model).is_dir() else Path(model), gguf_file, config=config)
        gguf_settings = settings.model_copy(update={"backend": "gguf", "gguf_unet_path": gguf_file})
        del naive
        gguf = GGUFBackend(gguf_settings, device, dtype).unet_weight_bytes
        ratio = gguf["quantized"] / gguf["quantized_fp32"]
        print(
            f"| gguf (Q8_0) | {gguf['unet']:,} | {gguf['quantized']:,} | {gguf['quantized_fp32']:,} | "
            f"{ratio:.1%} (target <= 30%) |"
        )
    print_encoding_table(args.encoding_size, args.encoding_rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
