"""The held-out loss in the report: drawn on the loss curve beside the training loss, its trend in
the curves block, and a call-out when it rises."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from zthumb_contract.eval_report import CurvesBlock, HoldoutTrend
from zthumb_trainer.eval import curves
from zthumb_trainer.eval.report import curves_markdown

HELD_OUT_RED = np.array([214, 39, 40])  # matplotlib's tab:red, the held-out series


def _progress(tmp_path, holdout_losses):
    """A progress log of 40 training steps and a held-out pass every 10 steps."""
    lines = [json.dumps({"step": step, "loss": 1 / step, "lr": 1e-4, "time": 0}) for step in range(1, 41)]
    for index, loss in enumerate(holdout_losses):
        lines.append(json.dumps({"step": 10 * (index + 1), "holdout_loss": loss, "time": 0}))
    lines.append(json.dumps({"step": 5, "holdout_loss": "NaN"}))  # skipped, as a bad loss record is
    path = tmp_path / "progress.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _red_pixels(path):
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int64)
    return int((np.abs(pixels - HELD_OUT_RED).sum(axis=-1) < 30).sum())


def _drawn(tmp_path, holdout_losses):
    staging = tmp_path / "staging"
    staging.mkdir(parents=True)
    block = curves.write_curves(_progress(tmp_path, holdout_losses), [], staging)
    assert block is not None
    return CurvesBlock.model_validate(block), staging


def test_the_loss_curve_draws_the_held_out_series_beside_the_training_loss(tmp_path):
    progress = curves.read_progress(_progress(tmp_path, [0.5, 0.4, 0.3, 0.35]))
    assert progress is not None and len(progress.steps) == 40  # holdout records are not training steps
    assert progress.holdout_steps.tolist() == [10, 20, 30, 40]
    assert progress.holdout_losses.tolist() == [0.5, 0.4, 0.3, 0.35]

    block, staging = _drawn(tmp_path / "with", [0.5, 0.4, 0.3, 0.35])
    assert block.holdout == HoldoutTrend(
        passes=4, min_step=30, min_loss=0.3, last_step=40, last_loss=0.35, rising=True
    )
    assert _red_pixels(staging / block.loss) > 50
    plain, plain_staging = _drawn(tmp_path / "without", [])
    assert plain.holdout is None and _red_pixels(plain_staging / plain.loss) == 0


@pytest.mark.parametrize(
    ("losses", "rising"),
    [
        ([0.5, 0.4, 0.3, 0.36], True),  # 20 % above the lowest, after it
        ([0.5, 0.4, 0.3, 0.31], False),  # within 5 %: noise, not a trend
        ([0.5, 0.4, 0.3, 0.2], False),  # falling
        ([0.3], False),  # one pass has no trend
        ([0.5, 0.8, 0.4], False),  # rose and fell again: the last is the lowest
    ],
)
def test_rising_means_the_last_pass_is_more_than_5_percent_above_the_lowest_before_it(losses, rising):
    assert HoldoutTrend.of(list(range(len(losses))), losses).rising is rising


def test_the_report_calls_out_a_rising_held_out_loss_and_not_a_falling_one(tmp_path):
    rising, _ = _drawn(tmp_path / "rising", [0.5, 0.4, 0.3, 0.45])
    text = "\n".join(curves_markdown(rising))
    assert "Held-out loss (4 passes): lowest 0.30000 at step 30, last 0.45000 at step 40" in text
    assert "**Held-out loss rising**: 50.0 % above its lowest (step 30)" in text

    falling, _ = _drawn(tmp_path / "falling", [0.5, 0.4, 0.3, 0.25])
    text = "\n".join(curves_markdown(falling))
    assert "Held-out loss (4 passes)" in text and "rising" not in text


def test_the_rise_in_percent_is_dumped_with_the_trend_for_the_page_and_read_back_without_it():
    trend = HoldoutTrend.of([10, 20, 30], [0.4, 0.2, 0.25])
    dumped = trend.model_dump()
    assert dumped["rise_percent"] == pytest.approx(25.0)
    assert HoldoutTrend.model_validate(json.loads(trend.model_dump_json(by_alias=True))) == trend
    assert HoldoutTrend.of([1, 2], [0.0, 0.1]).rise_percent is None  # no finite ratio from 0
