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

Every backend stays loaded (eager, compiled, and with ``slot`` a second compiled backend without LoRA
layers), so the per-image variants share interleaved rounds and the ratios come from the medians of
those rounds. What cannot be interleaved is said where it is measured: the first start (a cold
inductor cache, once per process), the adapter alternation (one backend, its own requests) and the
second start (a new process).

``hack/gpu/gpu_bench.py`` calls ``bench_compiled``; ``--second-start`` is the child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[2]
for package_root in ("images/zthumb", "images/trainer", "hack/lib", "hack/gpu"):
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
    from bench_stats import percentile
    from gpu_bench import median, release_gpu_memory
    from gpu_bench_rounds import Rounds
    from zthumb.backends.adapters import AdapterUse
    from zthumb.backends.compiled import compiled_graphs, take_new_graphs
    from zthumb.backends.full import FullBackend
    from zthumb.lora import AdapterFiles

    profile, timer, results = bench.profile, bench.timer, bench.results
    cuda = timer.cuda
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    needs = NEEDS_S if cuda else dict.fromkeys(NEEDS_S, 0.0)
    files = AdapterFiles(bench.lora_root)
    params = _params(profile)

    def left() -> float:
        return deadline - time.monotonic()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def compiled_settings(strategy: str) -> Any:
        return _settings(
            bench.model_dir,
            bench.lora_root,
            profile,
            compile=mode,
            compile_lora=strategy,
            compile_max_rank=slot_rank,
            compile_cache_dir=slot_dir,
        )

    # Every backend stays loaded, so the variants share interleaved rounds (hack/gpu/gpu_bench_rounds.py):
    # eager, compiled with --compile-lora, and with ``slot`` the compiled base as a second compiled
    # backend (``fuse`` with no adapter: no LoRA layers in its graph). Only the first start (a cold
    # cache) and the second start (a new process) are one-off numbers, with nothing to compare.
    eager = FullBackend(_settings(bench.model_dir, bench.lora_root, profile), device, dtype)
    slot_dir = shared_cache or bench.work / "inductor-slot"
    fused = lora == "fuse"
    no_adapter = "compiled base (fuse, no adapter)" if fused else "compiled + slot, no adapter"
    with_lora = f"compiled + {'fused' if fused else 'hot-swapped'} LoRA r{profile.lora_rank}"
    two_loras = f"compiled + 2 fused LoRAs r{profile.lora_rank}"
    plain_base = "compiled base (no LoRA layers)"
    eager_name = "eager base"
    run: dict[str, tuple[Any, Any]] = {eager_name: (eager, [])}  # variant: (backend, adapters)
    extras: dict[str, dict[str, Any]] = {}
    backend: Any = None
    if left() < needs["slot"]:
        results.notes.append(f"compiled {lora} skipped: {left():.0f} s left before the deadline")
    else:
        try:
            began = time.perf_counter()
            backend = FullBackend(compiled_settings(lora), device, dtype)
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
            adapter = AdapterUse(files.ref(bench.adapters[0]), 0.8)
            began = time.perf_counter()
            backend.apply_adapters([adapter])
            sync()
            extras[with_lora] = {"first_load_ms": round((time.perf_counter() - began) * 1000, 1)}
            run[no_adapter] = (backend, [])
            run[with_lora] = (backend, [adapter])
            if fused:
                run[two_loras] = (backend, [AdapterUse(files.ref(name), 0.6) for name in bench.adapters[:2]])
        except Exception as exc:  # report and go on: the other numbers still count
            backend = None
            results.notes.append(f"compiled {lora} failed: {type(exc).__name__}: {exc}")
            print(f"compiled {lora} failed: {exc!r}", flush=True)

    base_backend: Any = None
    if fused or backend is None:
        pass  # with fuse the no-adapter row is the compiled base: its graph has no LoRA in it
    elif left() < needs["base"]:
        results.notes.append(f"compiled base skipped: {left():.0f} s left before the deadline")
    else:
        try:  # the slot's inductor cache: kernels the two graphs share are not compiled twice
            began = time.perf_counter()
            base_backend = FullBackend(compiled_settings("fuse"), device, dtype)
            extras[plain_base] = {"to_ready_s": round(time.perf_counter() - began, 1)}
            run[plain_base] = (base_backend, [])
        except Exception as exc:
            results.notes.append(f"compiled base failed: {type(exc).__name__}: {exc}")
            print(f"compiled base failed: {exc!r}", flush=True)

    rounds = Rounds(list(run), profile.rounds)
    for _, name, recorded in rounds:
        owner, uses = run[name]
        owner.apply_adapters(uses)  # untimed: a fused adapter is merged here, a slot swapped in
        sync()
        seconds = timer.once(lambda: owner.generate(params))  # noqa: B023  (called at once)
        if recorded:
            rounds.record(name, seconds)
    for name in rounds.names:
        results.add(
            SECTION,
            name,
            s_per_image=round(rounds.median(name), 4),
            size=f"{profile.width}x{profile.height}",
            steps=profile.steps,
            **rounds.summary(name, eager_name),
            **extras.get(name, {}),
        )
    results.orders[SECTION] = rounds.order
    results.tables.append(rounds.table(f"{SECTION} ({lora}), s per image", eager_name))

    base = no_adapter if fused else plain_base
    if base in rounds.samples and with_lora in rounds.samples:
        ratio = rounds.ratio(with_lora, base)
        spread = rounds.round_ratios(with_lora, base)
        extra = {} if fused else {"no_adapter_over_compiled_base": round(rounds.ratio(no_adapter, base), 3)}
        results.add(
            SECTION,
            "ratios",
            lora_over_compiled_base=round(ratio, 3),
            lora_over_compiled_base_rounds=f"{min(spread):.3f}-{max(spread):.3f}",
            target="<= 1.10",
            met=ratio <= 1.10,
            **extra,
            compiled_base_over_eager=round(rounds.ratio(base, eager_name), 3),
            basis="medians of the same interleaved rounds",
        )
    del eager, base_backend, run

    second_start_ok = False
    if backend is not None:
        try:
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
                switch_ms_p95=round(percentile(switch, 95) * 1000, 2),
                request_p50_s=round(median(total), 4),
                requests=requests,
                steps=profile.switch_steps,
                recompiles=recompiles,
                graphs_total=compiled_graphs(),
                graphs_before=graphs_before,
                resident_mb=round(backend.compiled.resident_bytes() / 2**20, 1),
            )
            print(f"RECOMPILES after warm-up while alternating adapters: {recompiles}", flush=True)
            second_start_ok = True
        except Exception as exc:
            results.notes.append(f"compiled {lora} alternation failed: {type(exc).__name__}: {exc}")
            print(f"compiled {lora} alternation failed: {exc!r}", flush=True)
    del backend
    torch._dynamo.reset()
    release_gpu_memory(cuda)

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
        sys.exit("usage: called by hack/gpu/gpu_bench.py (section 5), or --second-start '<json>'")
