"""A real eval report on disk (written by the trainer's ``eval.run.write_report`` from synthetic
images), for the report pages' tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(
    reports_dir: Path, run: str, *, gate: dict[str, Any] | None = None, clip: bool = False,
    leakage: bool = False, curves: bool = False, fidelity: bool = False,
) -> Path:  # fmt: skip
    """``<reports_dir>/<run>/`` with pairs, summary.json and report.md; ``gate``: spec.eval.gate;
    ``clip``: add a CLIP block (the eval's shape) and a validation grid, as a full report has;
    ``leakage``: a leakage block (two prompts, one seed) with its pictures; ``curves``: a train run
    beside the reports (its summary, a 300-step progress.jsonl, three validation grids), so the
    report has its training curves; ``fidelity``: DINO and aesthetic blocks (the eval's shape)."""
    from PIL import Image
    from zthumb_contract.eval_report import LeakageBlock, LeakagePrompt
    from zthumb_trainer.eval.config import EvalConfig, Sample
    from zthumb_trainer.eval.run import write_report as write
    from zthumb_trainer.eval.scorers import Scores

    config = EvalConfig(
        server_url="http://zthumb.ml.svc:8080", output=reports_dir / run, run_name=run, lora_path=run,
        prompts=["a photo of zt"], seeds=[0, 1], scales=[0.0, 0.8], gate=gate or {},
        train_summary=write_train_run(reports_dir.parent / "lora" / run) if curves else None,
    )  # fmt: skip
    samples = [
        Sample(0, "a photo of zt", seed, scale, Image.new("RGB", (64, 64), (int(scale * 200), 60 + seed, 90)),
               0.5 + scale, {"adapter": {"path": run, "sha256": "ab" * 32}, "backend": "full",
                             "width": 64, "height": 64, "steps": 4})
        for seed in (0, 1) for scale in (0.0, 0.8)
    ]  # fmt: skip
    leakage_prompts = ("a city street", "a bowl of fruit")
    unasked = [
        Sample(index, prompt, 0, scale, Image.new("RGB", (64, 64), (90, 99, 50 * index)), 0.5, {})
        for index, prompt in enumerate(leakage_prompts) for scale in (0.0, 0.8)
    ]  # fmt: skip
    block = LeakageBlock(scale=0.8, seeds=[0], leakage=0.0825, prompts=[
        LeakagePrompt(prompt=prompt, similarity=1 - value, leakage=value, images=[f"leakage/l{index}-s0.png"])
        for index, (prompt, value) in enumerate(zip(leakage_prompts, (0.0588, 0.1062), strict=True))
    ])  # fmt: skip
    write(config, samples, {"backends": [{"name": "full", "model": "/data/models/sdxl", "device": "cpu",
                                          "dtype": "float32"}]}, 3.2,
          scores=Scores(leakage=block if leakage else None),
          leakage_samples=unasked if leakage else None)  # fmt: skip
    directory = reports_dir / run
    if clip:
        summary = json.loads((directory / "summary.json").read_text())
        summary["served_scale"] = 0.8
        summary["clip"] = {
            "model": {"name": "tiny-clip", "url": "http://x/clip.safetensors", "sha256": "cd" * 32},
            "reference_scale": 0.0, "training_images": 8,
            "by_scale": {
                "0": {"clip_t": 0.2512, "clip_i": 0.6011}, "0.8": {"clip_t": 0.2461, "clip_i": 0.6323}
            },
            "clip_i_gain": 0.0312, "clip_t_drop": 0.0051,
        }  # fmt: skip
        (directory / "samples").mkdir()
        Image.new("RGB", (128, 64), (20, 120, 200)).save(directory / "samples" / "step-15.png")
        sample = {"step": 15, "image": "samples/step-15.png", "seconds": 1.5}
        summary["validation"] = {"passes": 1, "secondsPerPass": 1.5, "samples": [sample]}
        (directory / "summary.json").write_text(json.dumps(summary, indent=2))
    if fidelity:
        summary = json.loads((directory / "summary.json").read_text())
        summary["dino"] = {
            "model": {"name": "dinov2-small.safetensors"}, "reference_scale": 0.0, "training_images": 8,
            "by_scale": {"0": {"dino": 0.4123}, "0.8": {"dino": 0.5234}}, "dino_gain": 0.1111,
        }  # fmt: skip
        summary["aesthetic"] = {
            "model": {"name": "laion-aesthetic.safetensors"}, "reference_scale": 0.0,
            "by_scale": {"0": {"aesthetic": 5.4321}, "0.8": {"aesthetic": 5.1234}}, "aesthetic_drop": 0.3087,
        }  # fmt: skip
        (directory / "summary.json").write_text(json.dumps(summary, indent=2))
    return directory


def write_train_run(run_dir: Path, steps: int = 300) -> Path:
    """What the train step leaves in its run dir for the eval's curves; its summary.json."""
    from PIL import Image

    (run_dir / "samples").mkdir(parents=True)
    training = {"stepsPerSecond": 2.5, "device": "cpu", "finalLoss": 0.1234}
    (run_dir / "summary.json").write_text(json.dumps({"steps": steps, "training": training}))
    records = (
        {"step": step, "loss": 0.5 / step**0.3 + 0.05 * (step % 7) / 7, "lr": 1e-4 * min(1, step / 50)}
        for step in range(1, steps + 1)
    )
    (run_dir / "progress.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    passes = [{"step": step, "image": f"step-{step}.png", "prompts": ["zt"], "seeds": [0], "seconds": 1.0}
              for step in (100, 200, 300)]  # fmt: skip
    for index, entry in enumerate(passes):
        Image.new("RGB", (256, 144), (40 + 80 * index, 120, 200)).save(run_dir / "samples" / entry["image"])
    (run_dir / "samples" / "samples.json").write_text(json.dumps({"passes": passes}))
    return run_dir / "summary.json"
