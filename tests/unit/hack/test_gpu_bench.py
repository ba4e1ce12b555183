"""The GPU benchmark's --tiny mode: the same code that runs full SDXL on a lent GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(1500)  # every training variant compiles on a 2-core CPU when the inductor cache is cold
def test_tiny_run_measures_every_section(tmp_path, hack_script):
    module = hack_script("gpu_bench")

    # No time budget: on a busy machine section 4 would skip its last variants (with a note) and
    # what this test checks would depend on the machine's speed.
    args = ["--tiny", "--out", str(tmp_path), "--skip", "compiled", "--training-budget-s", "1e9"]
    assert module.main(args) == 0

    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    sections = {row["section"] for row in report["rows"]}
    assert {"1 inference", "2 turbo", "3 adapter switching", "4 training"} <= sections
    variants = {row["variant"] for row in report["rows"] if row["section"] == "1 inference"}
    assert variants == {"SDPA (default)", "+ LoRA r16 unfused", "+ LoRA r16 fused"}
    training = [row for row in report["rows"] if row["section"] == "4 training"]
    assert {(row["batch"], row["variant"]) for row in training} == {
        (batch, f"batch {batch}, checkpointing {gc}, compile {compiled}")
        for batch in (1, 4)
        for gc in ("off", "on")
        for compiled in ("off", "blocks")
    } | {
        (1, "batch 1, checkpointing off, compile unet reduce-overhead"),
        (1, "batch 1, checkpointing off, compile blocks reduce-overhead"),
        (1, "batch 1, checkpointing off, compile unet"),
        (4, "batch 4, checkpointing off, compile unet reduce-overhead"),
    }
    for row in training:
        assert row["it_per_s"] > 0
        assert row["samples_per_s"] == pytest.approx(row["it_per_s"] * row["batch"], rel=0.01)
        assert row["gflop_per_step"] > 0 and row["timed_steps"] == 2
    assert any("FLOPs per training step" in note for note in report["notes"])
    assert any("target >= 10 samples/s at batch 4" in note for note in report["notes"])
    for row in report["rows"]:
        if row["section"] == "1 inference":
            assert row["s_per_image"] > 0
    assert "| 4 training |" in (tmp_path / "gpu_bench.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(1500)  # up to three compilations on a 2-core CPU when the inductor cache is cold
@pytest.mark.parametrize("lora", ["fuse", "slot"])
def test_tiny_run_of_the_compiled_section(tmp_path, hack_script, lora):
    """Section 5 on the CPU: every step runs, alternating adapters recompiles nothing."""
    module = hack_script("gpu_bench")
    # The server tests' inductor cache and slot rank: each warms the cache for the other.
    cache = Path.home() / ".cache" / "zthumb" / "test-models" / "torchinductor"
    args = ["--tiny", "--out", str(tmp_path), "--compile-cache", str(cache), "--slot-rank", "16"]
    args += ["--compile-lora", lora, "--skip", "inference", "--skip", "turbo", "--skip", "training"]
    assert module.main(args) == 0

    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    rows = {row["variant"]: row for row in report["rows"] if row["section"] == "5 compiled"}
    assert report["notes"] == []
    expected = {
        "fuse": {
            "compiled base (fuse, no adapter)",
            "compiled + fused LoRA r16",
            "compiled + 2 fused LoRAs r16",
        },
        "slot": {
            "compiled + slot, no adapter",
            "compiled + hot-swapped LoRA r16",
            "compiled base (no LoRA layers)",
        },
    }[lora]
    assert {
        "eager base",
        "first start (cold inductor cache)",
        "ratios",
        "second start (warm inductor cache, new process)",
    } | expected <= set(rows), sorted(rows)
    assert rows["first start (cold inductor cache)"]["lora"] == lora
    alternating = next(row for name, row in rows.items() if name.startswith("alternating 4 adapters"))
    assert alternating["recompiles"] == 0 and alternating["switch_ms_p50"] > 0
    assert rows["second start (warm inductor cache, new process)"]["recompiles"] == 0
    assert rows["ratios"]["lora_over_compiled_base"] > 0


def test_training_section_names_the_peak_it_divides_by(hack_script):
    module = hack_script("gpu_bench_training")
    assert module.peak_tflops("NVIDIA H100 80GB HBM3") == (989.0, "H100 SXM dense bf16 peak 989 TFLOP/s")
    assert module.peak_tflops("NVIDIA H100 PCIe")[0] == 756.0
    assert module.peak_tflops("NVIDIA H200")[0] == 989.0
    peak, label = module.peak_tflops("Some GPU")
    assert peak is None and "MFU not computed" in label


def test_training_step_flops_scale_with_the_batch(hack_script, tiny_model):
    module = hack_script("gpu_bench_training")
    one = module.training_step_flops(tiny_model.diffusers_dir, 1, 64, 4)
    two = module.training_step_flops(tiny_model.diffusers_dir, 2, 64, 4)
    assert one > 0 and two == 2 * one
