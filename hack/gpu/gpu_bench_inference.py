"""Sections 1 and 3 of hack/gpu/gpu_bench.py: the server's eager ``full`` backend.

1. the ``full`` backend at the profile's size and steps (SDXL 1024², 30 steps, CFG on, on a GPU):
   with SDPA, with an unfused rank-16 LoRA, with it fused, and with ``torch.compile`` of the UNet
   when it compiles inside the time budget;
3. adapter switching: one cached adapter, per-request alternation among 4 cached rank-16 adapters
   (the server's adapter cache) and the naive load + unload per request.

Each section's variants run in the same interleaved rounds (hack/gpu/gpu_bench_rounds.py), and its
ratios come from the medians of those rounds. Section 2 is hack/gpu/gpu_bench_thumbnails.py.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))  # bench_stats (hack/lib)
from bench_stats import percentile
from gpu_bench import median

if TYPE_CHECKING:
    from gpu_bench import Bench


def bench_inference(bench: Bench, deadline: float, compile_unet: bool) -> None:
    """Section 3 (adapter switching), then section 1 (full backend, 30 steps, CFG), each interleaved."""
    import torch
    from zthumb.backends.base import GenerationParams
    from zthumb.backends.full import FullBackend
    from zthumb.settings import Settings

    profile, timer, results = bench.profile, bench.timer, bench.results
    settings = Settings(
        model_path=bench.model_dir, backend="full", lora_root=bench.lora_root, lora_cache_size=8
    )
    device = torch.device("cuda" if timer.cuda else "cpu")
    dtype = torch.bfloat16 if timer.cuda else torch.float32
    backend = FullBackend(settings, device, dtype)
    results.add("load", "full backend", seconds=round(backend.load_seconds, 2))
    # The naive way loads and unloads around every request, and unloading removes every LoRA layer
    # of a pipeline: it gets a pipeline of its own, so its requests can alternate with the cache's.
    naive = FullBackend(settings, device, dtype)
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
    switch_params = GenerationParams(
        "a photo of zthumb", None, profile.width, profile.height, profile.switch_steps, profile.guidance, 0, 1
    )
    bench_switching(bench, backend, naive, switch_params)
    del naive
    bench_images(bench, backend, params, deadline, compile_unet)


def bench_switching(bench: Bench, backend: Any, naive: Any, params: Any) -> None:
    """Section 3: (b) one adapter, (c) alternating cached adapters, (d) naive load + unload.

    Before each timed request the pipeline is put, untimed, in the state that variant's previous
    request left: (b) its adapter active, so its switch is the no-op it is in a steady stream;
    (c) the previous adapter of its alternation, so every timed request really switches.
    """
    import torch
    from gpu_bench_rounds import Rounds
    from zthumb.lora import AdapterFiles

    profile, timer, results, adapters = bench.profile, bench.timer, bench.results, bench.adapters
    refs = [AdapterFiles(bench.lora_root).ref(name) for name in adapters]
    files = [bench.lora_root / name / "pytorch_lora_weights.safetensors" for name in adapters]
    for ref in refs:  # warm the cache: the first load of each is not a switch
        backend.apply_adapter(ref, 0.8)

    def sync() -> None:
        if timer.cuda:
            torch.cuda.synchronize()

    def cached(ref: Any) -> float:
        began = time.perf_counter()
        backend.apply_adapter(ref, 0.8)
        sync()
        switched = time.perf_counter()
        backend.generate(params)
        return switched - began

    def load_and_unload(index: int) -> float:
        began = time.perf_counter()
        naive.pipe.load_lora_weights(str(files[index % len(files)]), adapter_name="naive")
        naive.pipe.set_adapters(["naive"], [0.8])
        sync()
        loaded = time.perf_counter()
        naive.generate(params)
        sync()
        generated = time.perf_counter()
        naive.pipe.unload_lora_weights()
        sync()
        return (loaded - began) + (time.perf_counter() - generated)

    one, alternating, naive_name = (
        "one default adapter (b)",
        f"alternating {len(adapters)} cached (c)",
        "naive load+unload per request (d)",
    )
    rounds = Rounds([one, alternating, naive_name], profile.switch_requests)
    switches: dict[str, list[float]] = {name: [] for name in rounds.names}

    def timed(request: Callable[[], float]) -> tuple[float, float]:
        """(total, adapter step) of one request; the adapter step is part of the timed total."""
        switch: list[float] = []
        total = timer.once(lambda: switch.append(request()))
        return total, switch[0]

    for index, name, recorded in rounds:
        if name == one:
            backend.apply_adapter(refs[0], 0.8)
            total, switch = timed(partial(cached, refs[0]))
        elif name == alternating:
            backend.apply_adapter(refs[(index - 1) % len(refs)], 0.8)
            total, switch = timed(partial(cached, refs[index % len(refs)]))
        else:
            total, switch = timed(partial(load_and_unload, index))
        if recorded:
            rounds.record(name, total)
            switches[name].append(switch)
    for name in rounds.names:
        summary = rounds.summary(name, one)
        results.add(
            "3 adapter switching",
            name,
            switch_s=round(median(switches[name]), 5),
            request_p50_s=round(rounds.median(name), 4),
            request_p95_s=round(percentile(rounds.samples[name], 95), 4),
            steps=profile.switch_steps,
            **summary,
        )
    results.add(
        "3 adapter switching",
        "ratios (medians of the same rounds)",
        c_over_b=round(rounds.ratio(alternating, one), 3),
        cached_switch_over_naive_swap=round(median(switches[alternating]) / median(switches[naive_name]), 4),
    )
    results.orders["3 adapter switching"] = rounds.order
    results.tables.append(rounds.table("3 adapter switching, s per request", one))


def bench_images(bench: Bench, backend: Any, params: Any, deadline: float, compile_unet: bool) -> None:
    """Section 1: base, one rank-16 adapter unfused and fused, and the compiled UNet, interleaved.

    Fusing merges the adapter into the base weights; it is undone (untimed) after each fused
    request, so the next variant runs the base weights again.
    """
    import torch
    from gpu_bench_rounds import Rounds
    from zthumb.lora import AdapterFiles

    profile, timer, results = bench.profile, bench.timer, bench.results
    ref = AdapterFiles(bench.lora_root).ref(bench.adapters[0])
    base, unfused, fused, compiled = (
        "SDPA (default)",
        f"+ LoRA r{profile.lora_rank} unfused",
        f"+ LoRA r{profile.lora_rank} fused",
        "+ torch.compile (UNet)",
    )
    names = [base, unfused, fused]
    eager_unet = backend.pipe.unet
    compiled_unet: Any = None
    first_call: dict[str, float] = {}
    if not compile_unet:
        results.notes.append("torch.compile skipped (--no-compile)")
    elif time.monotonic() > deadline:
        results.notes.append("torch.compile skipped: the time budget was spent before it")
    else:
        # A compiled wrapper of the same UNet: the eager variants run the module without it, so all
        # four share the rounds. Compiled with the LoRA layers resident and disabled, as it runs.
        backend.apply_adapter(None, 0)
        compiled_unet = torch.compile(eager_unet)
        backend.pipe.unet = compiled_unet
        began = time.perf_counter()
        backend.generate(params)  # compiles
        first_call["first_call_s"] = round(time.perf_counter() - began, 1)
        backend.pipe.unet = eager_unet
        names.append(compiled)

    rounds = Rounds(names, profile.rounds)
    for _, name, recorded in rounds:
        with_lora = name in (unfused, fused)
        backend.apply_adapter(ref if with_lora else None, 0.8 if with_lora else 0)
        if name == fused:
            backend.pipe.fuse_lora(lora_scale=0.8)
        if name == compiled:
            backend.pipe.unet = compiled_unet
        seconds = timer.once(lambda: backend.generate(params))
        backend.pipe.unet = eager_unet
        if name == fused:
            backend.pipe.unfuse_lora()
        if recorded:
            rounds.record(name, seconds)
    backend.apply_adapter(None, 0)
    for name in rounds.names:
        results.add(
            "1 inference",
            name,
            s_per_image=round(rounds.median(name), 4),
            s_per_step=round(rounds.median(name) / profile.steps, 5),
            size=f"{profile.width}x{profile.height}",
            steps=profile.steps,
            **rounds.summary(name, base),
            **(first_call if name == compiled else {}),
        )
    results.orders["1 inference"] = rounds.order
    results.tables.append(rounds.table("1 inference, s per image", base))
