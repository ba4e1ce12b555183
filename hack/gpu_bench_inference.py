"""Sections 1 to 3 of hack/gpu_bench.py: the server's eager backends.

1. the ``full`` backend at the profile's size and steps (SDXL 1024², 30 steps, CFG on, on a GPU):
   with SDPA, with an unfused rank-16 LoRA, with it fused, and with ``torch.compile`` of the UNet
   when it compiles inside the time budget;
2. the ``turbo`` backend's settings (trailing Euler ancestral, 1 step, guidance 0);
3. adapter switching: per-request alternation among 4 cached rank-16 adapters (the server's
   adapter cache) against the naive load + unload per request.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpu_bench import Bench


def bench_inference(bench: Bench, deadline: float, compile_unet: bool) -> None:
    """Section 1 (full backend, 30 steps, CFG) and section 3 (adapter switching)."""
    profile, timer, results, lora_root, adapters = (
        bench.profile,
        bench.timer,
        bench.results,
        bench.lora_root,
        bench.adapters,
    )
    import torch
    from gpu_bench import median, percentile
    from zthumb.backends.base import GenerationParams
    from zthumb.backends.full import FullBackend
    from zthumb.lora import AdapterFiles
    from zthumb.settings import Settings

    settings = Settings(model_path=bench.model_dir, backend="full", lora_root=lora_root, lora_cache_size=8)
    device = torch.device("cuda" if timer.cuda else "cpu")
    dtype = torch.bfloat16 if timer.cuda else torch.float32
    backend = FullBackend(settings, device, dtype)
    results.add("load", "full backend", seconds=round(backend.load_seconds, 2))
    files = AdapterFiles(lora_root)
    params = GenerationParams(
        "a photo of zthumb, studio light",
        "blurry",
        profile.width,
        profile.height,
        profile.steps,
        profile.guidance,
        seed=0,
        num_images=1,
    )

    def image_row(variant: str, seconds: list[float], **extra: Any) -> None:
        results.add(
            "1 inference",
            variant,
            s_per_image=round(median(seconds), 4),
            s_per_step=round(median(seconds) / profile.steps, 5),
            size=f"{profile.width}x{profile.height}",
            steps=profile.steps,
            **extra,
        )

    base = timer.measure(lambda: backend.generate(params), profile.repeats)
    image_row("SDPA (default)", base)

    # Section 3 first, while no adapter is resident: the naive way loads and unloads
    # the adapter around every request, as the original server did.
    switch_params = GenerationParams(
        "a photo of zthumb",
        None,
        profile.width,
        profile.height,
        profile.switch_steps,
        profile.guidance,
        seed=0,
        num_images=1,
    )
    adapter_files = [lora_root / name / "pytorch_lora_weights.safetensors" for name in adapters]
    naive_swap: list[float] = []
    naive_total: list[float] = []
    for index in range(profile.switch_requests):
        began = time.perf_counter()
        backend.pipe.load_lora_weights(str(adapter_files[index % len(adapter_files)]), adapter_name="naive")
        backend.pipe.set_adapters(["naive"], [0.8])
        loaded = time.perf_counter()
        backend.generate(switch_params)
        generated = time.perf_counter()
        backend.pipe.unload_lora_weights()
        if timer.cuda:
            torch.cuda.synchronize()
        done = time.perf_counter()
        naive_swap.append((loaded - began) + (done - generated))
        naive_total.append(done - began)

    def cached_requests(names: list[str]) -> tuple[list[float], list[float]]:
        for name in names:  # warm the cache: the first load of each is not a switch
            backend.apply_adapter(files.ref(name), 0.8)
        swap, total = [], []
        for index in range(profile.switch_requests):
            began = time.perf_counter()
            backend.apply_adapter(files.ref(names[index % len(names)]), 0.8)
            switched = time.perf_counter()
            backend.generate(switch_params)
            if timer.cuda:
                torch.cuda.synchronize()
            swap.append(switched - began)
            total.append(time.perf_counter() - began)
        return swap, total

    one_swap, one_total = cached_requests(adapters[:1])
    alt_swap, alt_total = cached_requests(adapters)
    for variant, swap, total in (
        ("one default adapter (b)", one_swap, one_total),
        (f"alternating {len(adapters)} cached (c)", alt_swap, alt_total),
        ("naive load+unload per request (d)", naive_swap, naive_total),
    ):
        results.add(
            "3 adapter switching",
            variant,
            switch_s=round(median(swap), 5),
            request_p50_s=round(median(total), 4),
            request_p95_s=round(percentile(total, 0.95), 4),
            steps=profile.switch_steps,
        )
    results.add(
        "3 adapter switching",
        "ratios",
        c_over_b=round(median(alt_total) / median(one_total), 3),
        cached_switch_over_naive_swap=round(median(alt_swap) / median(naive_swap), 4),
    )

    # Section 1 with one rank-16 adapter: unfused (PEFT layers) and fused into the weights.
    backend.apply_adapter(files.ref(adapters[0]), 0.8)
    unfused = timer.measure(lambda: backend.generate(params), profile.repeats)
    image_row(f"+ LoRA r{profile.lora_rank} unfused", unfused)
    backend.pipe.fuse_lora(lora_scale=0.8)
    fused = timer.measure(lambda: backend.generate(params), profile.repeats)
    image_row(f"+ LoRA r{profile.lora_rank} fused", fused)
    backend.pipe.unfuse_lora()
    backend.apply_adapter(None, 0)

    if not compile_unet:
        results.notes.append("torch.compile skipped (--no-compile)")
    elif time.monotonic() > deadline:
        results.notes.append("torch.compile skipped: the time budget was spent before it")
    else:
        backend.pipe.unet = torch.compile(backend.pipe.unet)
        began = time.perf_counter()
        backend.generate(params)  # compiles
        compile_seconds = time.perf_counter() - began
        compiled = timer.measure(lambda: backend.generate(params), profile.repeats, warmup=1)
        image_row("+ torch.compile (UNet)", compiled, first_call_s=round(compile_seconds, 1))


def bench_turbo(bench: Bench) -> None:
    """Section 2: the turbo backend's settings (trailing Euler ancestral, 1 step, no CFG)."""
    import torch
    from gpu_bench import median
    from zthumb.backends.base import GenerationParams
    from zthumb.backends.turbo import TurboBackend
    from zthumb.settings import Settings

    profile, timer, model_dir = bench.profile, bench.timer, bench.model_dir

    settings = Settings(turbo_model_path=model_dir, backend="turbo", lora_root=model_dir)
    device = torch.device("cuda" if timer.cuda else "cpu")
    backend = TurboBackend(settings, device, torch.bfloat16 if timer.cuda else torch.float32)
    size = profile.turbo_size
    params = GenerationParams("a photo of zthumb", None, size, size, 1, 0.0, seed=0, num_images=1)
    seconds = timer.measure(lambda: backend.generate(params), profile.repeats * 3)
    bench.results.add(
        "2 turbo", "1 step, guidance 0", s_per_image=round(median(seconds), 4), size=f"{size}x{size}"
    )
