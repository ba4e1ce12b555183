"""The one-command local run, end to end: real processes, real HTTP fetch, the real ZThumb server."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_local_run_end_to_end(tmp_path, record_property):
    executable = Path(sys.executable).parent / "zthumb-train"
    started = time.monotonic()
    completed = subprocess.run(
        [str(executable), "run", "--local", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    seconds = time.monotonic() - started
    record_property("local_run_seconds", round(seconds, 1))  # reported (junit XML, -rP), never a limit
    print(f"local run took {seconds:.0f}s")
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert f"adapter: {tmp_path}/models/lora/demo" in completed.stdout
    assert f"logs:    tensorboard --logdir {tmp_path}/outputs/lora/demo/logs" in completed.stdout
    assert f"report:  {tmp_path}/outputs/lora_eval/demo/report.md" in completed.stdout

    adapter = tmp_path / "models" / "lora" / "demo"
    assert (adapter / "pytorch_lora_weights.safetensors").exists()
    assert json.loads((adapter / "adapter.json").read_text())["steps"] == 30
    summary = json.loads((tmp_path / "outputs" / "lora_eval" / "demo" / "summary.json").read_text())
    # One prompt in each group, two seeds, three scales.
    assert summary["requests"] == 12
    assert summary["min_pixel_difference"] > 0  # the adapter changed every pair
    assert summary["adapter"]["sha256"]
    assert (tmp_path / "outputs" / "lora" / "demo" / "progress.jsonl").exists()
    assert list((tmp_path / "outputs" / "lora" / "demo" / "logs").glob("events.out.tfevents.*"))
    # The train step's numbers reach the report through --train-summary.
    assert summary["training"]["memoryKind"] == "ProcessMaxRSS" and summary["training"]["stepsPerSecond"] > 0
    assert "- Training on `cpu`:" in (tmp_path / "outputs" / "lora_eval" / "demo" / "report.md").read_text()
    # The demo's validation samples: midway and at the end, in the train summary and the report.
    samples = tmp_path / "outputs" / "lora" / "demo" / "samples"
    assert (samples / "step-15.png").exists() and (samples / "step-30.png").exists()
    assert summary["validation"]["passes"] == 2
    assert (
        "![step 15](samples/step-15.png)"
        in (tmp_path / "outputs" / "lora_eval" / "demo" / "report.md").read_text()
    )
    # CLIP-T / CLIP-I with the tiny CLIP the runner served, fetched and verified like the model.
    assert set(summary["clip"]["by_scale"]) == {"0", "0.4", "0.8"} and summary["clip"]["training_images"] == 8
    assert (
        "## Quality metrics (CLIP)" in (tmp_path / "outputs" / "lora_eval" / "demo" / "report.md").read_text()
    )
    # Leakage: the default prompts without the trigger, through the real server and tiny adapter.
    leakage = summary["leakage"]
    assert len(leakage["prompts"]) == 3 and leakage["scale"] == 0.8
    assert math.isfinite(leakage["leakage"]) and 0 <= leakage["leakage"] <= 2
    assert (tmp_path / "outputs" / "lora_eval" / "demo" / leakage["prompts"][0]["images"][0]).exists()
    # The scale sweep: both prompt groups and the prompts without the trigger, every metric at every
    # scale, the chart, and the recommendation (a rule's answer, or why none) in the report.
    sweep = summary["sweep"]
    assert list(sweep["groups"]) == ["in_distribution", "out_of_distribution", "without_trigger"]
    for group in ("in_distribution", "out_of_distribution"):
        assert set(sweep["groups"][group]) == {"pixel_difference", "clip_t", "clip_i", "dino", "aesthetic"}
        assert all(set(values) == {"0", "0.4", "0.8"} for values in sweep["groups"][group].values())
    assert set(sweep["groups"]["without_trigger"]["leakage"]) == {"0", "0.4", "0.8"}
    assert (tmp_path / "outputs" / "lora_eval" / "demo" / sweep["chart"]).stat().st_size > 10_000
    assert summary["pairs"][-1]["image"] == "pairs/ood-p0-s1.png"
    assert "Recommended scale" in (tmp_path / "outputs" / "lora_eval" / "demo" / "report.md").read_text()
    # DINO and the aesthetic score with the tiny DINOv2 and head the runner served, per scale.
    dino, aesthetic = summary["dino"], summary["aesthetic"]
    assert (
        set(dino["by_scale"]) == set(aesthetic["by_scale"]) == {"0", "0.4", "0.8"}
        and dino["training_images"] == 8
    )
    assert -2 <= dino["dino_gain"] <= 2 and math.isfinite(aesthetic["aesthetic_drop"])
    assert set(summary["pairs"][0]["dino"]) == set(summary["pairs"][0]["aesthetic"]) == {"0", "0.4", "0.8"}
    assert (
        "## Subject fidelity and aesthetics"
        in (tmp_path / "outputs" / "lora_eval" / "demo" / "report.md").read_text()
    )
    # The demo's quality gate: passed, at the top of the report, said on stderr.
    assert summary["gate"]["passed"] is True, summary["gate"]
    assert (
        "**Quality gate passed**" in (tmp_path / "outputs" / "lora_eval" / "demo" / "report.md").read_text()
    )
    assert "eval gate passed: meanPixelDifference" in completed.stderr


def test_a_local_run_whose_adapter_fails_the_gate_ends_with_eval_gate_failed(tmp_path):
    """The embedded demo's spec with an unreachable gate, as a YAML: the run fails after its eval."""
    import yaml
    from zthumb_trainer.local.run import EMBEDDED_DEFAULT

    spec = json.loads(json.dumps(EMBEDDED_DEFAULT))
    spec["training"]["validation"] = {}  # not what this test is about
    # Out of reach: a pixel difference of 250, a DINO gain of 2 (cosines), an aesthetic drop of -10.
    spec["eval"]["gate"] = {"minMeanPixelDifference": 250, "minDinoGain": 2.0, "maxAestheticDrop": -10}
    # The tiny head replaces the one named here (as the tiny CLIP replaces spec.eval.clip's).
    spec["eval"]["aesthetic"] = {
        "enabled": True,
        "url": "https://example.invalid/h.safetensors",
        "sha256": "0" * 64,
    }
    finetune = tmp_path / "finetune.yaml"
    manifest = {"apiVersion": "zthumb.io/v1alpha1", "kind": "LoRAFinetune", "metadata": {"name": "gated"}}
    finetune.write_text(yaml.safe_dump({**manifest, "spec": spec}))
    executable = Path(sys.executable).parent / "zthumb-train"
    completed = subprocess.run(
        [str(executable), "run", "--local", "--tiny", "--workdir", str(tmp_path / "work"), str(finetune)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert completed.returncode != 0
    assert "EvalGateFailed: eval gate failed: meanPixelDifference" in completed.stderr, completed.stderr[
        -3000:
    ]
    assert "< min 250" in completed.stderr
    assert "dinoGain" in completed.stderr and "< min 2;" in completed.stderr
    assert "aestheticDrop" in completed.stderr and "> max -10" in completed.stderr
    report = (tmp_path / "work" / "outputs" / "lora_eval" / "gated" / "report.md").read_text()
    assert "**Quality gate failed** (EvalGateFailed)" in report
