#!/usr/bin/env python3
"""How long a full collection of Python's cyclic garbage collector pauses the server with its
pipelines loaded, without and with ``ZTHUMB_GC_FREEZE`` (``gc.freeze()`` after loading).

Python runs a full collection by itself every so often; it walks every tracked object, and the
request being generated waits for it. The rows are cumulative states of one process: torch and
diffusers imported; plus the tiny fixture's pipeline (what the tests and the demo serve); plus
SDXL base 1.0's UNet, both text encoders and VAE built from the published configs on the meta
device (``hack/gpu/sdxl_configs.py``): the same Python objects as a loaded SDXL pipeline (modules,
parameters, configs) without allocating their weights. Each row times ``gc.collect()`` unfrozen
and frozen, interleaved, ``--repeats`` times: median and max. Once a pipeline is loaded, one
tiny generation (64x64, 2 steps) runs before each timed collection, so the frozen column is what
a collection still walks in the frozen server: a request's own objects. No weights, no network,
CPU only.

    .venv/bin/python hack/bench/bench_gc.py [--repeats 7] [--tiny]    # --tiny: no SDXL row (the test)
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for package_root in ("images/trainer", "hack/gpu"):  # sdxl_configs: the GPU benchmark's
    sys.path.insert(0, str(REPO / package_root))


def full_collection_ms(repeats: int, request: Callable[[], Any]) -> tuple[list[float], list[float]]:
    """Milliseconds of gc.collect() after ``request()``: with nothing frozen, then with everything
    alive before the request frozen (what the server freezes: the loaded state)."""
    unfrozen, frozen = [], []
    for _ in range(repeats):
        gc.unfreeze()
        request()
        began = time.perf_counter()
        gc.collect()
        unfrozen.append((time.perf_counter() - began) * 1000)
        gc.freeze()
        request()
        began = time.perf_counter()
        gc.collect()
        frozen.append((time.perf_counter() - began) * 1000)
    gc.unfreeze()
    return unfrozen, frozen


def tiny_pipeline() -> Any:
    from diffusers import StableDiffusionXLPipeline
    from zthumb_trainer.tiny.tiny_model import build_tiny_model

    tiny = build_tiny_model(Path.home() / ".cache" / "zthumb" / "test-models" / "tiny-sdxl")
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny.diffusers_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: Any) -> None:
    """One request's worth of work and allocations: a 64x64, 2-step image."""
    import torch

    pipe("a photo", num_inference_steps=2, width=64, height=64, generator=torch.Generator().manual_seed(0))


def sdxl_on_meta() -> list[Any]:
    import sdxl_configs
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        return [
            UNet2DConditionModel(**sdxl_configs.UNET),
            AutoencoderKL(**sdxl_configs.VAE),
            CLIPTextModel(CLIPTextConfig(**sdxl_configs.TEXT_ENCODER)),
            CLIPTextModelWithProjection(CLIPTextConfig(**sdxl_configs.TEXT_ENCODER_2)),
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tiny", action="store_true", help="leave out the SDXL row (seconds, for the test)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import diffusers  # noqa: F401 - the floor: the libraries' own objects
    import torch  # noqa: F401

    rows: list[tuple[str, int, list[float], list[float]]] = []

    def measure(label: str, request: Callable[[], Any]) -> None:
        rows.append((label, len(gc.get_objects()), *full_collection_ms(args.repeats, request)))

    # Cumulative: each state keeps what it loaded alive for the rows after it.
    measure("torch + diffusers imported", lambda: None)
    pipe = tiny_pipeline()
    measure("+ the tiny pipeline", partial(generate, pipe))
    if not args.tiny:
        sdxl = sdxl_on_meta()
        measure("+ SDXL base's 4 models (meta device)", partial(generate, pipe))
        del sdxl

    print(f"\nfull collection (gc.collect), {args.repeats} repeats, ms: median / max\n")
    print("| state | tracked objects | unfrozen | frozen (ZTHUMB_GC_FREEZE) | frozen / unfrozen |")
    print("| --- | --- | --- | --- | --- |")
    for label, objects, unfrozen, frozen in rows:
        ratio = statistics.median(frozen) / statistics.median(unfrozen)
        print(
            f"| {label} | {objects} | {statistics.median(unfrozen):.1f} / {max(unfrozen):.1f} "
            f"| {statistics.median(frozen):.2f} / {max(frozen):.2f} | {ratio:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
