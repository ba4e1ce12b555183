#!/usr/bin/env python3
"""Section 5 of the GPU benchmark: the server's compiled path (``ZTHUMB_COMPILE``).

Through the server's ``full`` backend, at the profile's size and steps (SDXL 1024², 30 steps,
CFG on, on a GPU): eager base; the compiled UNet with ``--compile-lora`` (``fuse``, the server's
default, or ``slot``), first start with a cold inductor cache; no adapter and a rank-16 adapter
(fused, or hot-swapped into the slot); with ``fuse`` also two adapters combined; 4 adapters
alternating per request with changing scales (the recompile count must stay 0) and the switch
cost; with ``slot``, the compiled base without LoRA layers (with ``fuse`` the no-adapter row is
that base); the ratio LoRA / compiled base (target ≤ 1.10); and a second start in a fresh process
with the same, now warm, inductor cache (time to the first image).

``hack/gpu_bench.py`` calls ``bench_compiled``; ``--second-start`` is the child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parent.parent
for package_root in ("images/zthumb", "images/trainer", "hack"):
    if str(REPO / package_root) not in sys.path:
        sys.path.insert(0, str(REPO / package_root))

if TYPE_CHECKING:
    from gpu_bench import Bench

SECTION = "5 compiled"
# Seconds a step needs at least before it starts (full SDXL on a GPU; the tiny CPU run needs none).
NEEDS_S = {"slot": 200.0, "base": 120.0, "second": 100.0}


def _settings(model_dir: Path, lora_root: Path, profile: Any, **overrides: Any) -> Any:
    from zthumb.settings import Settings

    # The warm-up generation uses these defaults, so the measured requests have its shapes.
    values: dict[str, Any] = {
        "model_path": model_dir,
        "backend": "full",
        "lora_root": lora_root,
        "lora_cache_size": 8,
        "default_width": profile.width,
        "default_height": profile.height,
        "default_steps": profile.steps,
        "default_guidance_scale": profile.guidance,
    }
    values.update(overrides)
    return Settings(**values)


def _params(profile: Any, steps: int | None = None) -> Any:
    from zthumb.backends.base import GenerationParams

    return GenerationParams(
        "a photo of zthumb, studio light",
        "blurry",
        profile.width,
        profile.height,
        steps or profile.steps,
        profile.guidance,
        seed=0,
        num_images=1,
    )


def _measure(timer: Any, backend: Any, params: Any, repeats: int) -> list[float]:
    return timer.measure(lambda: backend.generate(params), repeats)


def bench_compiled(
    bench: Bench,
    deadline: float,
    *,
    mode: str,
    slot_rank: int,
    shared_cache: Path | None = None,
    lora: str = "fuse",
) -> None:
    """Measure the compiled path; each step is skipped (with a note) when the deadline is too near.

    The first start gets a fresh (cold) inductor cache; the slot's separate compiled base (whose
    first call is therefore not a cold start) and the second start reuse it. ``shared_cache`` (the
    tests: the server tests' cache) replaces it with a directory that may be warm already.
    """
    import torch
    from gpu_bench import median, percentile, release_gpu_memory
    from zthumb.backends.compiled import compiled_graphs, configure_inductor_cache, take_new_graphs
    from zthumb.backends.full import FullBackend
    from zthumb.lora import AdapterFiles

    profile, timer, results = bench.profile, bench.timer, bench.results
    cuda = timer.cuda
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    needs = NEEDS_S if cuda else dict.fromkeys(NEEDS_S, 0.0)
    files = AdapterFiles(bench.lora_root)
    params = _params(profile)
    seconds: dict[str, float] = {}

    def left() -> float:
        return deadline - time.monotonic()

    def row(variant: str, values: list[float], **extra: Any) -> None:
        seconds[variant] = median(values)
        results.add(
            SECTION,
            variant,
            s_per_image=round(median(values), 4),
            size=f"{profile.width}x{profile.height}",
            steps=profile.steps,
            **extra,
        )

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    eager = FullBackend(_settings(bench.model_dir, bench.lora_root, profile), device, dtype)
    row("eager base", _measure(timer, eager, params, profile.repeats))

    slot_dir = shared_cache or bench.work / "inductor-slot"
    second_start_ok = False
    fullgraph = True  # the compiled base compiles as the slot did (one graph, or with breaks)
    fused = lora == "fuse"
    no_adapter = "compiled base (fuse, no adapter)" if fused else "compiled + slot, no adapter"
    with_lora = f"compiled + {'fused' if fused else 'hot-swapped'} LoRA r{profile.lora_rank}"
    if left() < needs["slot"]:
        results.notes.append(f"compiled {lora} skipped: {left():.0f} s left before the deadline")
    else:
        try:
            began = time.perf_counter()
            backend = FullBackend(
                _settings(
                    bench.model_dir,
                    bench.lora_root,
                    profile,
                    compile=mode,
                    compile_lora=lora,
                    compile_max_rank=slot_rank,
                    compile_cache_dir=slot_dir,
                ),
                device,
                dtype,
            )
            compiled = backend.compiled
            assert compiled is not None
            results.add(
                SECTION,
                "first start (cold inductor cache)",
                to_ready_s=round(time.perf_counter() - began, 1),
                compile_s=round(compiled.compile_seconds, 1),
                mode=mode,
                lora=lora,
                **({} if fused else {"slot_rank": slot_rank, "slot_layers": len(compiled.scalings)}),
                fullgraph=compiled.fullgraph,
            )
            take_new_graphs()
            backend.apply_adapter(None, 0.0)
            row(no_adapter, timer.measure(lambda: backend.generate(params), profile.repeats))
            began = time.perf_counter()
            backend.apply_adapter(files.ref(bench.adapters[0]), 0.8)
            sync()
            first_load = time.perf_counter() - began
            row(
                with_lora,
                timer.measure(lambda: backend.generate(params), profile.repeats),
                first_load_ms=round(first_load * 1000, 1),
            )
            if fused:
                from zthumb.backends.adapters import AdapterUse

                pair = [AdapterUse(files.ref(name), 0.6) for name in bench.adapters[:2]]
                backend.apply_adapters(pair)
                row(
                    f"compiled + 2 fused LoRAs r{profile.lora_rank}",
                    timer.measure(lambda: backend.generate(params), profile.repeats),
                )

            for name in bench.adapters:  # every adapter resident: the alternation measures switches
                backend.apply_adapter(files.ref(name), 0.8)
            scales = [0.8, 1.0, 0.5, 0.0, 1.2]
            switch_params = _params(profile, profile.switch_steps)
            switch, total = [], []
            requests = max(profile.switch_requests, 2 * len(bench.adapters))
            take_new_graphs()
            graphs_before = compiled_graphs()
            for index in range(requests):
                began = time.perf_counter()
                backend.apply_adapter(
                    files.ref(bench.adapters[index % len(bench.adapters)]), scales[index % len(scales)]
                )
                sync()
                switched = time.perf_counter()
                backend.generate(switch_params)
                sync()
                switch.append(switched - began)
                total.append(time.perf_counter() - began)
            recompiles = take_new_graphs()
            results.add(
                SECTION,
                f"alternating {len(bench.adapters)} adapters, scales {scales}",
                switch_ms_p50=round(median(switch) * 1000, 2),
                switch_ms_p95=round(percentile(switch, 0.95) * 1000, 2),
                request_p50_s=round(median(total), 4),
                requests=requests,
                steps=profile.switch_steps,
                recompiles=recompiles,
                graphs_total=compiled_graphs(),
                graphs_before=graphs_before,
                resident_mb=round(compiled.resident_bytes() / 2**20, 1),
            )
            print(f"RECOMPILES after warm-up while alternating adapters: {recompiles}", flush=True)
            second_start_ok = True
            fullgraph = compiled.fullgraph
            del backend, compiled
        except Exception as exc:  # report and go on: the other numbers still count
            results.notes.append(f"compiled {lora} failed: {type(exc).__name__}: {exc}")
            print(f"compiled {lora} failed: {exc!r}", flush=True)
        torch._dynamo.reset()
        release_gpu_memory(cuda)

    if fused:
        pass  # the no-adapter row above is the compiled base: the graph has no LoRA in it
    elif left() < needs["base"]:
        results.notes.append(f"compiled base skipped: {left():.0f} s left before the deadline")
    else:
        try:
            configure_inductor_cache(slot_dir)  # kernels the slot graph shares are not compiled twice
            options: dict[str, Any] = {"fullgraph": fullgraph} | ({} if mode == "default" else {"mode": mode})
            eager.pipe.unet.compile(**options)
            began = time.perf_counter()
            eager.generate(params)
            first = time.perf_counter() - began
            row(
                "compiled base (no LoRA layers)",
                _measure(timer, eager, params, profile.repeats),
                first_call_s=round(first, 1),
            )
        except Exception as exc:
            results.notes.append(f"compiled base failed: {type(exc).__name__}: {exc}")
            print(f"compiled base failed: {exc!r}", flush=True)
    del eager
    torch._dynamo.reset()
    release_gpu_memory(cuda)

    base = seconds.get(no_adapter if fused else "compiled base (no LoRA layers)")
    lora_seconds = seconds.get(with_lora)
    if base and lora_seconds:
        ratio = lora_seconds / base
        extra = {"no_adapter_over_compiled_base": round(seconds[no_adapter] / base, 3)} if not fused else {}
        results.add(
            SECTION,
            "ratios",
            lora_over_compiled_base=round(ratio, 3),
            target="<= 1.10",
            met=ratio <= 1.10,
            **extra,
            compiled_base_over_eager=round(base / seconds["eager base"], 3),
        )

    if not second_start_ok:
        return
    if left() < needs["second"]:
        results.notes.append(f"second start skipped: {left():.0f} s left before the deadline")
        return
    config = {
        "model_dir": str(bench.model_dir),
        "lora_root": str(bench.lora_root),
        "adapter": bench.adapters[0],
        "mode": mode,
        "lora": lora,
        "slot_rank": slot_rank,
        "cache_dir": str(slot_dir),
        "tiny": profile.tiny,
        "spawned": time.time(),
    }
    try:
        child = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--second-start", json.dumps(config)],
            capture_output=True,
            text=True,
            timeout=max(30.0, left() - 10) if cuda else None,
            env=os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(slot_dir)},
            check=True,
        )
        report = json.loads(child.stdout.strip().splitlines()[-1])
        results.add(SECTION, "second start (warm inductor cache, new process)", **report)
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        tail = getattr(exc, "stderr", "") or ""
        results.notes.append(f"second start failed: {type(exc).__name__}: {exc} {tail[-1500:]}")
        print(f"second start failed: {exc!r}\n{tail[-3000:]}", flush=True)


def second_start(config: dict[str, Any]) -> dict[str, Any]:
    """A fresh process: load, compile from the warm cache, serve one request with an adapter."""
    import torch
    from gpu_bench import Profile
    from zthumb.backends.compiled import take_new_graphs
    from zthumb.backends.full import FullBackend
    from zthumb.lora import AdapterFiles

    imported = time.time()
    profile = Profile.for_mode(config["tiny"])
    cuda = not config["tiny"]
    settings = _settings(
        Path(config["model_dir"]),
        Path(config["lora_root"]),
        profile,
        compile=config["mode"],
        compile_lora=config["lora"],
        compile_max_rank=config["slot_rank"],
        compile_cache_dir=Path(config["cache_dir"]),
    )
    backend = FullBackend(
        settings, torch.device("cuda" if cuda else "cpu"), torch.bfloat16 if cuda else torch.float32
    )
    ready = time.time()
    assert backend.compiled is not None
    take_new_graphs()
    backend.apply_adapter(AdapterFiles(settings.lora_root).ref(config["adapter"]), 0.8)
    backend.generate(_params(profile))
    if cuda:
        torch.cuda.synchronize()
    done = time.time()
    return {
        "to_ready_s": round(ready - config["spawned"], 1),
        "compile_s": round(backend.compiled.compile_seconds, 1),
        "imports_s": round(imported - config["spawned"], 1),
        "to_first_image_s": round(done - config["spawned"], 1),
        "recompiles": take_new_graphs(),
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--second-start":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        print(json.dumps(second_start(json.loads(sys.argv[2]))), flush=True)
    else:
        sys.exit("usage: called by hack/gpu_bench.py (section 5), or --second-start '<json>'")
