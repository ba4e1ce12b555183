"""The report's training curves: drawn from the train step's progress.jsonl and validation grids,
bounded, and named in the report only when written."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from PIL import Image
from zthumb_trainer.eval import curves
from zthumb_trainer.eval.config import EvalConfig, Sample
from zthumb_trainer.eval.run import write_report


def _run_dir(tmp_path, steps=40, grids=(10, 20, 30, 40), lr=True):
    """A train run dir: summary.json, progress.jsonl (a resume re-logs steps 21-25), grids."""
    run_dir = tmp_path / "outputs" / "lora" / "style"
    (run_dir / "samples").mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"steps": steps}))
    lines = []
    for step in [*range(1, 26), *range(21, steps + 1)]:
        record = {"step": step, "total_steps": steps, "loss": 1 / step, "time": 0}
        if lr:
            record["lr"] = 1e-4 * min(1, step / 10)
        lines.append(json.dumps(record))
    lines += ["not json", json.dumps({"step": 7, "loss": "NaN"}), json.dumps([1, 2])]
    (run_dir / "progress.jsonl").write_text("\n".join(lines) + "\n")
    passes = [
        {"step": s, "image": f"step-{s}.png", "prompts": ["zt"], "seeds": [0], "seconds": 1.0} for s in grids
    ]
    for entry in passes:
        Image.new("RGB", (600, 400), (entry["step"] * 5, 90, 90)).save(run_dir / "samples" / entry["image"])
    (run_dir / "samples" / "samples.json").write_text(json.dumps({"passes": passes}))
    return run_dir


def _write(tmp_path, train_summary):
    output = tmp_path / "outputs" / "lora_eval" / "style"
    config = EvalConfig(
        server_url="http://zthumb:8080", output=output, run_name="style", lora_path="style",
        prompts=["x"], seeds=[0], scales=[0.0, 0.8], train_summary=train_summary,
    )  # fmt: skip
    samples = [Sample(0, "x", 0, scale, Image.new("RGB", (64, 64), (int(scale * 99), 0, 0)), 0.1, {})
               for scale in (0.0, 0.8)]  # fmt: skip
    return output, write_report(config, samples, {}, 1.0)


def test_the_report_shows_loss_learning_rate_and_the_validation_strip(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(tmp_path / "termination-log"))
    run_dir = _run_dir(tmp_path)
    output, report = _write(tmp_path, run_dir / "summary.json")
    block = report.curves
    assert block is not None
    assert (block.loss, block.learning_rate, block.validation_strip) == (
        curves.LOSS_IMAGE, curves.LEARNING_RATE_IMAGE, curves.VALIDATION_STRIP_IMAGE
    )  # fmt: skip
    # Steps 21-25 logged twice (a resume) count once; the bad lines are skipped.
    assert (block.logged_steps, block.first_step, block.last_step) == (40, 1, 40)
    assert block.strip_steps == [10, 20, 30, 40]
    for path in block.images():
        with Image.open(output / path) as image:
            assert image.format == "PNG" and image.width > 0
    with Image.open(output / curves.LOSS_IMAGE) as image:
        assert image.size == (800, 300)
    with Image.open(output / curves.VALIDATION_STRIP_IMAGE) as image:
        assert image.size == (4 * 384 + 3 * curves.STRIP_GAP, curves.STRIP_HEIGHT)  # scaled down
    markdown = (output / "report.md").read_text()
    assert "## Training curves" in markdown and f"![training loss]({curves.LOSS_IMAGE})" in markdown
    assert f"![learning rate]({curves.LEARNING_RATE_IMAGE})" in markdown
    assert "Validation grids at steps 10, 20, 30, 40" in markdown
    # Every file the report names is there.
    for named in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (output / named).is_file(), named
    assert json.loads((output / "summary.json").read_text())["curves"]["loss"] == curves.LOSS_IMAGE


def test_no_learning_rate_logged_no_learning_rate_image(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(tmp_path / "termination-log"))
    output, report = _write(tmp_path, _run_dir(tmp_path, lr=False, grids=()) / "summary.json")
    assert report.curves is not None and report.curves.loss and report.curves.learning_rate is None
    assert report.curves.validation_strip is None
    assert not (output / curves.LEARNING_RATE_IMAGE).exists()
    assert "learning rate" not in (output / "report.md").read_text()


def test_without_a_train_run_there_are_no_curves(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(tmp_path / "termination-log"))
    output, report = _write(tmp_path, None)
    # Only the scale sweep's chart, which needs no train run.
    drawn = [path.name for path in (output / curves.CURVES_DIR).iterdir()]
    assert report.curves is None and drawn == ["scales.png"]
    assert "Training curves" not in (output / "report.md").read_text()


def test_a_long_log_is_drawn_from_a_bounded_number_of_points(tmp_path):
    steps = np.arange(1, 10_001)
    losses = np.linspace(2, 1, steps.size)
    drawn_steps, drawn_losses = curves.downsample(steps, losses, points=100)
    assert drawn_steps.size == drawn_losses.size == 100
    assert drawn_steps[0] == pytest.approx(50.5) and drawn_losses[-1] == pytest.approx(losses[-100:].mean())


def test_only_the_newest_part_of_a_huge_log_is_read(tmp_path, monkeypatch):
    log = tmp_path / "progress.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0, "lr": 0.1}) + "\n" for s in range(1, 2001)))
    monkeypatch.setattr(curves, "MAX_PROGRESS_BYTES", 10_000)
    progress = curves.read_progress(log)
    assert progress is not None and progress.steps[-1] == 2000 and 0 < progress.steps.size < 400
    log.write_text(json.dumps({"step": 1, "loss": 1.0, "pad": "x" * (2 * curves.MAX_LINE_BYTES)}) + "\n")
    assert curves.read_progress(log) is None  # an overlong line is skipped, not read whole


def test_the_strip_holds_at_most_a_bounded_number_of_grids_first_and_last_in():
    passes = [(step, None) for step in range(1, 101)]
    picked = [step for step, _ in curves.strip_passes(passes)]
    assert len(picked) == curves.MAX_STRIP_GRIDS and picked[0] == 1 and picked[-1] == 100


def test_smoothing_is_a_debiased_moving_average():
    values = np.array([1.0, 1.0, 3.0])
    smooth = curves.smoothed(values, weight=0.5)
    assert smooth[0] == 1.0 and smooth[1] == 1.0
    assert math.isclose(smooth[2], (0.125 * 1 + 0.25 * 1 + 0.5 * 3) / (1 - 0.5**3))  # 15/7
