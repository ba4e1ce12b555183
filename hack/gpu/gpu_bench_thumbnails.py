"""Section 2 of hack/gpu/gpu_bench.py: thumbnails, the turbo path at 512x512, 1 step, guidance 0.

Through the server itself: the FastAPI app (``zthumb.app.build_app``) with its lifespan, device
worker and dynamic batching (``zthumb.batching``, ``ZTHUMB_MAX_BATCH``), driven in process over
ASGI (httpx), every request ``POST /generate`` with its own prompt and seed, the image answered as
bytes in the server's default format. Variants, interleaved per round (hack/gpu/gpu_bench_rounds.py):

- the turbo backend alone, batch 1 (``generate`` on the app's own backend: no HTTP, queue, encoding);
- the server, one request at a time (a batch of one);
- the same with ``decoder: "tiny"``: a TAESD-XL-architecture ``AutoencoderTiny`` (random weights:
  the time does not depend on them) decodes instead of SDXL's VAE;
- the server, 8 and 32 concurrent requests (batched up to ``ZTHUMB_MAX_BATCH`` = 32);
- a second server, the same turbo model with its UNet compiled (``ZTHUMB_COMPILE``, by default
  ``reduce-overhead``: CUDA graphs on a GPU), one request at a time with either decoder. Its
  warm-up runs at the benchmark's size, one step, no CFG, so the timed requests are warm-up's
  shape; the row says how many graphs were compiled after warm-up (0 expected). A compiled UNet
  never batches (a new batch size would compile again), so there is no batched compiled row.

Both servers stay loaded (one after the other: diffusers' loading is not safe on two threads at
once), so the compiled rows share the eager rows' rounds.

Per variant: per-image latency p50/p95 (each request from sending to its answer) and images/s
(the requests of a round over its wall time, median over rounds), and the mean batch the worker
formed (``zthumb_batch_size``). Targets on an H100: one thumbnail <= 60 ms end to end in the
server; >= 60 thumbnails/s batched. With ``--tiny`` the same code runs on the CPU with the tiny
model at 64x64: the numbers say only that the path works.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))  # bench_stats (hack/lib)
from bench_stats import percentile
from gpu_bench_rounds import Rounds

if TYPE_CHECKING:
    from gpu_bench import Bench

SECTION = "2 thumbnails"
CONCURRENT = (8, 32)
MAX_BATCH = max(CONCURRENT)
TARGET_ONE_MS = 60.0
TARGET_BATCHED_PER_S = 60.0
READY_TIMEOUT_S = 600.0  # loading the turbo model (full SDXL size on a GPU)
ALONE, ONE = "turbo backend alone, batch 1", "server, 1 request at a time"
ONE_TINY = "server, 1 request at a time, tiny decoder"
ONE_COMPILED = "server, 1 request at a time, compiled"
ONE_COMPILED_TINY = "server, 1 request at a time, compiled, tiny decoder"
COMPILED = (ONE_COMPILED, ONE_COMPILED_TINY)


def concurrent_name(count: int) -> str:
    return f"server, {count} concurrent (batched)"


def bench_thumbnails(
    bench: Bench, compile_mode: str = "reduce-overhead", compile_cache: Path | None = None
) -> None:
    """Load the apps on the turbo backend (eager, and compiled unless ``compile_mode`` is "off"),
    run the interleaved rounds, add the rows and the table. ``compile_cache``: the inductor cache
    (default: a fresh one in the work directory)."""
    from zthumb.app import build_app
    from zthumb.settings import Settings

    profile = bench.profile
    no_adapters = bench.work / "thumbnail-lora"  # thumbnails use none; the root must exist
    no_adapters.mkdir(exist_ok=True)
    tiny_decoder = bench.work / "taesdxl"
    common: dict[str, Any] = {
        "backend": "turbo",
        "tiny_decoder_path": tiny_decoder,
        "tiny_decoder_sha256": _write_random_tiny_decoder(tiny_decoder),
        "turbo_model_path": bench.model_dir,
        "lora_root": no_adapters,
        "device": "cuda" if bench.timer.cuda else "cpu",
        "max_batch": MAX_BATCH,
        "max_queue": 2 * MAX_BATCH,
        "min_size": 8,
        # The compiled server's warm-up runs at the default size: the size every request here has.
        "default_width": profile.turbo_size,
        "default_height": profile.turbo_size,
    }
    settings = Settings(**common)
    apps = {"eager": build_app(settings)}
    if compile_mode != "off":
        cache = compile_cache or bench.work / "inductor-thumbnails"
        apps["compiled"] = build_app(Settings(**common, compile=compile_mode, compile_cache_dir=cache))
    asyncio.run(_drive(apps, bench, settings.batch_wait_ms, compile_mode))
    del apps
    if profile.tiny:
        bench.results.notes.append("2 thumbnails: tiny (CPU): not a measurement")


def _write_random_tiny_decoder(directory: Path) -> str:
    """diffusers' default AutoencoderTiny (TAESD-XL's architecture) with random weights, the weights
    file alone (as the chart fetches it); its sha256."""
    import hashlib

    import torch
    from diffusers import AutoencoderTiny
    from safetensors.torch import save_file

    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / "diffusion_pytorch_model.safetensors"
    model: Any = AutoencoderTiny()  # diffusers' stubs do not show nn.Module's methods
    save_file(model.state_dict(), str(weights))
    return hashlib.sha256(weights.read_bytes()).hexdigest()


async def _drive(apps: dict[str, Any], bench: Bench, batch_wait_ms: float, compile_mode: str) -> None:
    from contextlib import AsyncExitStack

    import httpx

    profile, results = bench.profile, bench.results
    size = profile.turbo_size
    sequential = 1 if profile.tiny else 8  # batch-1 requests per round, one after another
    one_at_a_time = [ONE, ONE_TINY, *(COMPILED if "compiled" in apps else ())]
    names = [ALONE, *one_at_a_time, *(concurrent_name(count) for count in CONCURRENT)]
    images = dict.fromkeys([ALONE, *one_at_a_time], sequential) | {concurrent_name(n): n for n in CONCURRENT}
    concurrency = dict.fromkeys([ALONE, *one_at_a_time], 1) | {concurrent_name(n): n for n in CONCURRENT}
    # The tiny CPU run skips the warm-up round: it checks the path, its numbers mean nothing.
    rounds = Rounds(names, profile.thumbnail_rounds, warmup=0 if profile.tiny else 1)
    latencies: dict[str, list[float]] = {name: [] for name in names}
    batches: dict[str, list[float]] = {name: [] for name in names}  # (requests, pipeline calls)
    serial = iter(range(10**9))  # every request its own prompt and seed: no prompt-cache hits

    async with AsyncExitStack() as stack:
        clients: dict[str, Any] = {}
        for kind, app in apps.items():  # one after the other: each loads (and compiles) alone
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            clients[kind] = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=READY_TIMEOUT_S)
            )
            await _wait_ready(clients[kind])
        backend = apps["eager"].state.engine.backends["turbo"]
        histogram = apps["eager"].state.engine.metrics.registry.get_sample_value

        async def post(number: int, decoder: str = "full", kind: str = "eager") -> float:
            body = {
                "prompt": f"a thumbnail of product {number}, studio photo",
                "width": size,
                "height": size,
                "steps": 1,
                "guidance_scale": 0.0,
                "seed": number,
                "response_format": "bytes",
                "decoder": decoder,
            }
            began = time.perf_counter()
            answer = await clients[kind].post("/generate", json=body)
            if answer.status_code != 200:
                raise RuntimeError(f"POST /generate answered {answer.status_code}: {answer.text[:500]}")
            return time.perf_counter() - began

        def alone(number: int) -> float:
            from zthumb.backends.base import GenerationParams

            began = time.perf_counter()
            backend.generate(
                GenerationParams(f"a thumbnail of product {number}", None, size, size, 1, 0.0, number, 1)
            )
            return time.perf_counter() - began

        for _, name, recorded in rounds:
            kind = "compiled" if name in COMPILED else "eager"
            decoder = "tiny" if name in (ONE_TINY, ONE_COMPILED_TINY) else "full"
            calls_before = histogram("zthumb_batch_size_count") or 0.0
            began = time.perf_counter()
            if name == ALONE:
                seconds = [alone(next(serial)) for _ in range(sequential)]
            elif name in one_at_a_time:
                seconds = [await post(next(serial), decoder, kind) for _ in range(sequential)]
            else:
                seconds = list(await asyncio.gather(*(post(next(serial)) for _ in range(images[name]))))
            wall = time.perf_counter() - began
            calls = (histogram("zthumb_batch_size_count") or 0.0) - calls_before
            if recorded:
                rounds.record(name, wall)
                latencies[name] += seconds
                # A compiled UNet never batches (its jobs have no batch key and count no batch).
                if name not in (ALONE, *COMPILED):
                    batches[name].append(images[name] / calls if calls else float("nan"))
        compiled = _compiled_numbers(apps["compiled"]) if "compiled" in apps else {}

    for name in names:
        per_s = [images[name] / wall for wall in rounds.samples[name]]
        extra = {"compile": compile_mode, **compiled} if name in COMPILED else {}
        results.add(
            SECTION,
            name,
            concurrency=concurrency[name],
            requests=len(latencies[name]),
            latency_p50_ms=round(statistics.median(latencies[name]) * 1000, 1),
            latency_p95_ms=round(percentile(latencies[name], 95) * 1000, 1),
            images_per_s=round(statistics.median(per_s), 2),
            mean_batch=round(statistics.fmean(batches[name]), 1) if batches[name] else "-",
            size=f"{size}x{size}",
            steps=1,
            **extra,
        )
    results.orders[SECTION] = rounds.order
    results.tables.append(_table(results.rows, profile.tiny, size, batch_wait_ms, profile.thumbnail_rounds))


def _compiled_numbers(app: Any) -> dict[str, Any]:
    """From the compiled server's own registry: graphs compiled after its warm-up (every timed
    request included; 0 expected) and its startup compile time."""
    sample = app.state.engine.metrics.registry.get_sample_value
    labels = {"backend": "turbo"}
    return {
        "recompiles": int(sample("zthumb_compile_recompiles_total", labels) or 0),
        "compile_s": round(sample("zthumb_compile_seconds", labels) or 0.0, 1),
    }


async def _wait_ready(client: Any) -> None:
    """Poll /readyz (the model loads on the worker after start-up), bounded by READY_TIMEOUT_S."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while (await client.get("/readyz")).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server was not ready within {READY_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.1)


def _table(rows: list[dict[str, Any]], tiny: bool, size: int, batch_wait_ms: float, rounds: int) -> str:
    lines = [
        f"2 thumbnails, turbo, {size}x{size}, 1 step, guidance 0, {rounds} interleaved rounds; "
        "compiled rows: a second server with the UNet compiled (ZTHUMB_COMPILE), warmed up at this size; "
        f"ZTHUMB_MAX_BATCH={MAX_BATCH}, ZTHUMB_BATCH_WAIT_MS={batch_wait_ms:g}; targets on an H100: "
        f"one thumbnail <= {TARGET_ONE_MS:g} ms end to end in the server, "
        f">= {TARGET_BATCHED_PER_S:g} thumbnails/s batched"
        + ("; tiny (CPU): not a measurement" if tiny else ""),
        "",
        "| variant | concurrency | requests | per-image p50 ms | per-image p95 ms | images/s | mean batch "
        "| compile | recompiles after warm-up | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in (row for row in rows if row["section"] == SECTION):
        if tiny or row["variant"] == ALONE:
            target = "-"
        elif row["concurrency"] == 1:
            target = "met" if row["latency_p50_ms"] <= TARGET_ONE_MS else "not met"
        else:
            target = "met" if row["images_per_s"] >= TARGET_BATCHED_PER_S else "not met"
        lines.append(
            f"| {row['variant']} | {row['concurrency']} | {row['requests']} | {row['latency_p50_ms']} | "
            f"{row['latency_p95_ms']} | {row['images_per_s']} | {row['mean_batch']} | "
            f"{row.get('compile', 'off')} | {row.get('recompiles', '-')} | {target} |"
        )
    return "\n".join(lines)
