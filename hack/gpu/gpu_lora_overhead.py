#!/usr/bin/env python3
"""Where does an unfused LoRA's cost go at 1024², 30 steps? A focused follow-up to gpu_bench.

The first GPU run measured +94% per image for one rank-16 LoRA through the server and
+49% fused, far above what the extra FLOPs explain (rank 16 adds well under 1%). This
script separates the suspects on the same machine and model: the server's adapter
cache against plain diffusers with one adapter, eager Python/launch overhead (CPU
time vs CUDA time from torch.profiler), and a baseline measured before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]
import gpu_bench  # noqa: E402  (also puts the packages on sys.path)


def profile_one(run, label: str) -> dict[str, float]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    events = prof.key_averages()
    cuda_ms = sum(e.self_device_time_total for e in events) / 1000
    launches = sum(e.count for e in events if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
    print(f"{label}: CUDA busy {cuda_ms:.0f} ms, kernel launches {launches}", flush=True)
    return {"cuda_busy_ms": round(cuda_ms, 1), "kernel_launches": launches}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/gpu_bench")))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from zthumb.backends.base import GenerationParams
    from zthumb.backends.full import FullBackend
    from zthumb.lora import AdapterFiles
    from zthumb.settings import Settings

    cuda = torch.cuda.is_available() and not args.tiny
    profile = gpu_bench.Profile.for_mode(not cuda)
    timer = gpu_bench.Timer(cuda)
    results = gpu_bench.Results(device={"name": torch.cuda.get_device_name() if cuda else "CPU"})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = gpu_bench.build_model_dir(profile, work, "cuda" if cuda else "cpu")
        lora_root = work / "lora"
        names = gpu_bench.write_random_adapters(model_dir, lora_root, 1, 16, "cuda" if cuda else "cpu")
        settings = Settings(model_path=model_dir, lora_root=lora_root)
        device = torch.device("cuda" if cuda else "cpu")
        backend = FullBackend(settings, device, torch.bfloat16 if cuda else torch.float32)
        params = GenerationParams("a photo of zthumb", "blurry", profile.width, profile.height,
                                  profile.steps, 6.0, seed=0, num_images=1)  # fmt: skip
        short = GenerationParams("a photo of zthumb", None, profile.width, profile.height, 4, 6.0, 0, 1)

        def row(variant: str) -> None:
            seconds = gpu_bench.median(timer.measure(lambda: backend.generate(params), profile.repeats))
            extra = profile_one(lambda: backend.generate(short), variant) if cuda else {}
            results.add("lora overhead", variant, s_per_image=round(seconds, 4), **extra)

        row("base (before)")
        backend.apply_adapter(AdapterFiles(lora_root).ref(names[0]), 0.8)
        row("server cache, 1 adapter, unfused")
        backend.apply_adapter(None, 0)
        row("server cache, adapter disabled")
        backend.pipe.unload_lora_weights()
        backend._adapters.clear()
        backend._layers = None
        backend.pipe.load_lora_weights(str(lora_root / names[0]), adapter_name="plain")
        backend.pipe.set_adapters(["plain"], [0.8])
        row("plain diffusers, 1 adapter, unfused")
        backend.pipe.fuse_lora(lora_scale=0.8)
        row("plain diffusers, fused")
        backend.pipe.unload_lora_weights()
        row("base (after unload)")
    args.out.mkdir(parents=True, exist_ok=True)
    table = gpu_bench.markdown_table(results)
    (args.out / "gpu_lora_overhead.md").write_text(table + "\n")
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
