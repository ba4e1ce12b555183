"""The GPU benchmark's --tiny mode: the same code that runs full SDXL on a lent GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# The server tests' inductor cache: the compiled runs here warm it for them and the other way round.
SERVER_TESTS_INDUCTOR_CACHE = Path.home() / ".cache" / "zthumb" / "test-models" / "torchinductor"


def _assert_interleaved(order: list[str], variants: set[str]) -> None:
    """Every round runs each variant once, and the first of a round is not always the same one."""
    count = len(variants)
    rounds = [order[start : start + count] for start in range(0, len(order), count)]
    assert len(order) % count == 0 and len(rounds) >= 2, order
    assert all(set(one_round) == variants for one_round in rounds), order
    assert len({one_round[0] for one_round in rounds}) > 1, order


@pytest.mark.slow  # tiny-model generations and one compile of the tiny turbo UNet on a busy 2-core CPU
@pytest.mark.timeout(1500)  # the compile, when the inductor cache is cold
def test_tiny_run_interleaves_the_variants_and_serves_thumbnails(tmp_path, hack_script):
    """Sections 1 to 3: variants alternate per round with equal sample counts, ratios come from
    those rounds, and the thumbnail rows run through the server alone and batched (8 and 32), and
    one at a time on a compiled turbo server that compiles nothing after its warm-up."""
    module = hack_script("gpu_bench")
    args = ["--tiny", "--out", str(tmp_path), "--skip", "compiled", "--skip", "training"]
    args += ["--compile-cache", str(SERVER_TESTS_INDUCTOR_CACHE)]
    assert module.main(args) == 0

    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    rows = {(row["section"], row["variant"]): row for row in report["rows"]}
    images = {"SDPA (default)", "+ LoRA r16 unfused", "+ LoRA r16 fused"}
    switching = {"one default adapter (b)", "alternating 4 cached (c)", "naive load+unload per request (d)"}
    for section, variants in (("1 inference", images), ("3 adapter switching", switching)):
        _assert_interleaved(report["orders"][section], variants)
        counts = {rows[section, name]["samples"] for name in variants}
        assert len(counts) == 1 and counts.pop() == report["orders"][section].count(next(iter(variants)))
    assert rows["1 inference", "+ LoRA r16 fused"]["over_base"] > 0
    assert rows["1 inference", "SDPA (default)"]["s_per_image"] > 0
    assert rows["3 adapter switching", "ratios (medians of the same rounds)"]["c_over_b"] > 0

    thumbnails = {name: row for (section, name), row in rows.items() if section == "2 thumbnails"}
    assert {row["concurrency"] for row in thumbnails.values()} == {1, 8, 32}
    _assert_interleaved(report["orders"]["2 thumbnails"], set(thumbnails))
    for name in ("server, 8 concurrent (batched)", "server, 32 concurrent (batched)"):
        row = thumbnails[name]
        assert row["requests"] == 2 * row["concurrency"] and row["images_per_s"] > 0
        assert 1 < row["mean_batch"] <= row["concurrency"]  # the worker did batch them
        assert 0 < row["latency_p50_ms"] <= row["latency_p95_ms"]
    assert thumbnails["server, 1 request at a time"]["mean_batch"] == 1
    tiny_decoder = thumbnails["server, 1 request at a time, tiny decoder"]
    assert tiny_decoder["mean_batch"] == 1 and tiny_decoder["latency_p50_ms"] > 0
    for name in (
        "server, 1 request at a time, compiled",
        "server, 1 request at a time, compiled, tiny decoder",
    ):
        row = thumbnails[name]
        assert (row["compile"], row["recompiles"], row["mean_batch"]) == ("reduce-overhead", 0, "-"), row
        assert row["compile_s"] > 0 and row["latency_p50_ms"] > 0
    table = (tmp_path / "gpu_bench.md").read_text()
    assert "one thumbnail <= 60 ms end to end in the server, >= 60 thumbnails/s batched" in table
    assert "tiny (CPU): not a measurement" in table
    assert "| server, 32 concurrent (batched) | 32 |" in table
    assert "| server, 1 request at a time, compiled | 1 |" in table


@pytest.mark.slow
@pytest.mark.timeout(1500)  # every training variant compiles on a 2-core CPU when the inductor cache is cold
def test_tiny_run_measures_every_training_variant(tmp_path, hack_script):
    module = hack_script("gpu_bench")

    # No time budget: on a busy machine section 4 would skip its last variants (with a note) and
    # what this test checks would depend on the machine's speed. Sections 1 to 3: the test above.
    args = ["--tiny", "--out", str(tmp_path), "--skip", "compiled", "--skip", "inference", "--skip", "turbo"]
    assert module.main([*args, "--training-budget-s", "1e9"]) == 0

    report = json.loads((tmp_path / "gpu_bench.json").read_text())
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
    assert "| 4 training |" in (tmp_path / "gpu_bench.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(1500)  # up to three compilations on a 2-core CPU when the inductor cache is cold
@pytest.mark.parametrize("lora", ["fuse", "slot"])
def test_tiny_run_of_the_compiled_section(tmp_path, hack_script, lora):
    """Section 5 on the CPU: every step runs, the variants are interleaved, alternating adapters
    recompiles nothing."""
    module = hack_script("gpu_bench")
    # The server tests' inductor cache and slot rank: each warms the cache for the other.
    args = ["--tiny", "--out", str(tmp_path), "--compile-cache", str(SERVER_TESTS_INDUCTOR_CACHE)]
    args += ["--slot-rank", "16"]
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
    assert rows["ratios"]["basis"] == "medians of the same interleaved rounds"
    # The per-image variants alternate in rounds, each with as many samples as the others.
    per_image = {"eager base"} | expected
    _assert_interleaved(report["orders"]["5 compiled"], per_image)
    assert len({rows[name]["samples"] for name in per_image}) == 1


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


def test_rounds_rotate_the_order_and_skip_the_warm_up(hack_script):
    module = hack_script("gpu_bench_rounds")
    rounds = module.Rounds(["base", "a", "b"], rounds=3, warmup=1)
    ran = []
    for index, name, recorded in rounds:
        ran.append((index, name, recorded))
        if recorded:
            rounds.record(name, {"base": 2.0, "a": 3.0, "b": 1.0}[name] * (index + 1))
    assert [name for _, name, _ in ran[:3]] == ["base", "a", "b"] and not any(r for _, _, r in ran[:3])
    assert rounds.order == ["a", "b", "base", "b", "base", "a", "base", "a", "b"]
    assert {name: len(values) for name, values in rounds.samples.items()} == {"base": 3, "a": 3, "b": 3}
    # Drift (every value grows with the round) cancels out of the ratio of the same rounds.
    assert rounds.ratio("a", "base") == pytest.approx(1.5)
    assert rounds.round_ratios("b", "base") == pytest.approx([0.5, 0.5, 0.5])
    row = rounds.summary("a", "base")
    assert row["samples"] == 3 and row["over_base"] == 1.5 and row["round_ratio_min_max"] == "1.500-1.500"
    assert "| a | 3 | 9.0000 | 12.0000 | 1.5 | 1.500-1.500 |" in rounds.table("t", "base")
    with pytest.raises(ValueError):
        module.Rounds([], rounds=1)
