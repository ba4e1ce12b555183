"""The training curves of an eval report, as PNG images a person can look at: the loss (raw and
smoothed, with the held-out loss where the run had held-out images) and the learning rate over the
steps, from the train step's ``progress.jsonl``, and the validation grids side by side in step
order (one strip). The held-out loss's trend (``HoldoutTrend``: is it rising?) goes to the block.

Bounded whatever the run left behind: at most ``MAX_PROGRESS_BYTES`` of the log are read (its
newest part), a line longer than ``MAX_LINE_BYTES`` is skipped, the curves are drawn from at most
``MAX_POINTS`` points (means of equal runs of steps), and every image has a fixed size. Drawn with
matplotlib's Agg backend: no display, no GUI toolkit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from PIL import Image
from zthumb_contract.eval_report import HoldoutTrend

matplotlib.use("Agg")  # headless: the eval pod has no display
from matplotlib.figure import Figure

CURVES_DIR = "curves"
LOSS_IMAGE = f"{CURVES_DIR}/loss.png"
LEARNING_RATE_IMAGE = f"{CURVES_DIR}/learning-rate.png"
VALIDATION_STRIP_IMAGE = f"{CURVES_DIR}/validation-strip.png"
# 64 MiB is ~500k steps of progress lines; a longer log is read from its newest 64 MiB.
MAX_PROGRESS_BYTES = 64 * 2**20
MAX_LINE_BYTES = 4096
MAX_POINTS = 1000  # a curve 800 px wide shows no more
SMOOTHING = 0.9  # the exponential moving average's weight of the past, as TensorBoard's default
FIGURE_INCHES = (8.0, 3.0)
DPI = 100  # 800 x 300 px
MAX_STRIP_GRIDS = 8  # evenly spaced over the passes, the first and the last always in
STRIP_HEIGHT = 256
STRIP_TILE_MAX_WIDTH = 512
STRIP_GAP = 8


@dataclass(frozen=True)
class Progress:
    """The logged steps in step order, each with its loss and learning rate (NaN: not logged), and
    the held-out loss passes (``holdout_loss`` records) in step order."""

    steps: np.ndarray
    losses: np.ndarray
    learning_rates: np.ndarray
    holdout_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    holdout_losses: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def holdout_trend(self) -> HoldoutTrend | None:
        if not len(self.holdout_steps):
            return None
        return HoldoutTrend.of(self.holdout_steps.tolist(), self.holdout_losses.tolist())


def read_progress(path: Path) -> Progress | None:
    """The steps of ``progress.jsonl`` (a resumed run logs some steps twice: the later record
    wins); None when there is no log or no usable record."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - MAX_PROGRESS_BYTES))
            if size > MAX_PROGRESS_BYTES:
                handle.readline(MAX_LINE_BYTES)  # a partial first line
            records: dict[int, tuple[float, float]] = {}
            holdout: dict[int, float] = {}
            while line := handle.readline(MAX_LINE_BYTES + 1):
                if len(line) > MAX_LINE_BYTES:
                    continue
                if (record := _record(line)) is not None:
                    records[record[0]] = record[1:]
                elif (point := _holdout_record(line)) is not None:
                    holdout[point[0]] = point[1]
    except OSError:
        return None
    if not records:
        return None
    steps = sorted(records)
    return Progress(
        steps=np.asarray(steps, dtype=np.int64),
        losses=np.asarray([records[step][0] for step in steps], dtype=np.float64),
        learning_rates=np.asarray([records[step][1] for step in steps], dtype=np.float64),
        holdout_steps=np.asarray(sorted(holdout), dtype=np.int64),
        holdout_losses=np.asarray([holdout[step] for step in sorted(holdout)], dtype=np.float64),
    )


def _record(line: bytes) -> tuple[int, float, float] | None:
    try:
        record = json.loads(line)
        step, loss = int(record["step"]), float(record["loss"])
        learning_rate = float(record.get("lr", math.nan))
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        return None
    return (step, loss, learning_rate) if step >= 0 and math.isfinite(loss) else None


def _holdout_record(line: bytes) -> tuple[int, float] | None:
    try:
        record = json.loads(line)
        step, loss = int(record["step"]), float(record["holdout_loss"])
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        return None
    return (step, loss) if step >= 0 and math.isfinite(loss) else None


def smoothed(values: np.ndarray, weight: float = SMOOTHING) -> np.ndarray:
    """The debiased exponential moving average (TensorBoard's smoothing), one value per input."""
    out = np.empty_like(values)
    average, correction = 0.0, 1.0
    for index, value in enumerate(values):
        average = weight * average + (1 - weight) * value
        correction *= weight
        out[index] = average / (1 - correction)
    return out


def downsample(steps: np.ndarray, *series: np.ndarray, points: int = MAX_POINTS) -> list[np.ndarray]:
    """At most ``points`` points: each the mean of an equal run of consecutive steps (NaNs left out)."""
    if len(steps) <= points:
        return [steps.astype(np.float64), *series]
    chunks = np.array_split(np.arange(len(steps)), points)
    out = [np.array([steps[chunk].mean() for chunk in chunks])]
    for values in series:
        out.append(np.array([_mean(values[chunk]) for chunk in chunks]))
    return out


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _figure(title: str, ylabel: str) -> tuple[Figure, Any]:
    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI, layout="tight")
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def draw_loss(progress: Progress, path: Path) -> None:
    steps, raw, smooth = downsample(progress.steps, progress.losses, smoothed(progress.losses))
    held_out = len(progress.holdout_steps) > 0
    figure, axes = _figure("Training and held-out loss" if held_out else "Training loss", "loss")
    axes.plot(steps, raw, color="tab:blue", alpha=0.35, linewidth=1, label="raw")
    axes.plot(steps, smooth, color="tab:blue", linewidth=2, label=f"smoothed ({SMOOTHING:g} EMA)")
    if held_out:
        holdout_steps, holdout_losses = downsample(progress.holdout_steps, progress.holdout_losses)
        axes.plot(holdout_steps, holdout_losses, color="tab:red", marker="o", linewidth=2, label="held-out")
    axes.legend(loc="upper right")
    figure.savefig(path)


def draw_learning_rate(progress: Progress, path: Path) -> bool:
    """The learning-rate curve; False (nothing drawn) when the log has no learning rates."""
    if not np.isfinite(progress.learning_rates).any():
        return False
    steps, rates = downsample(progress.steps, progress.learning_rates)
    figure, axes = _figure("Learning rate", "learning rate")
    axes.plot(steps, rates, color="tab:orange", linewidth=2)
    axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    figure.savefig(path)
    return True


def strip_passes(passes: list[tuple[int, Path]], most: int = MAX_STRIP_GRIDS) -> list[tuple[int, Path]]:
    """At most ``most`` of the passes, evenly spaced, the first and the last included."""
    if len(passes) <= most:
        return passes
    picks = np.linspace(0, len(passes) - 1, most).round().astype(int)
    return [passes[index] for index in dict.fromkeys(picks.tolist())]


def draw_validation_strip(grids: list[tuple[int, Path]], path: Path) -> list[int]:
    """The grids side by side at one height (each grid is labelled with its step by the train
    step); the steps drawn (none: no grid could be read, nothing written)."""
    tiles, steps = [], []
    for step, grid in grids:
        try:
            with Image.open(grid) as image:
                image.thumbnail((STRIP_TILE_MAX_WIDTH, STRIP_HEIGHT))
                tiles.append(image.convert("RGB"))
                steps.append(step)
        except (OSError, Image.DecompressionBombError):  # UnidentifiedImageError is an OSError
            continue
    if not tiles:
        return []
    width = sum(tile.width for tile in tiles) + STRIP_GAP * (len(tiles) - 1)
    strip = Image.new("RGB", (width, max(tile.height for tile in tiles)), "white")
    left = 0
    for tile in tiles:
        strip.paste(tile, (left, 0))
        left += tile.width + STRIP_GAP
    strip.save(path)
    return steps


def write_curves(
    progress_log: Path | None, validation_grids: list[tuple[int, Path]], staging: Path
) -> dict[str, Any] | None:
    """Draw what there is into ``<staging>/curves/``; the report's ``curves`` block naming only the
    images written, or None when there is nothing to draw."""
    progress = read_progress(progress_log) if progress_log is not None else None
    grids = strip_passes(validation_grids)
    if progress is None and not grids:
        return None
    (staging / CURVES_DIR).mkdir(exist_ok=True)
    block: dict[str, Any] = {}
    if progress is not None:
        draw_loss(progress, staging / LOSS_IMAGE)
        block |= {
            "loss": LOSS_IMAGE,
            "logged_steps": len(progress.steps),
            "points": min(len(progress.steps), MAX_POINTS),
            "first_step": int(progress.steps[0]),
            "last_step": int(progress.steps[-1]),
        }
        if (trend := progress.holdout_trend()) is not None:
            block["holdout"] = trend.model_dump()
        if draw_learning_rate(progress, staging / LEARNING_RATE_IMAGE):
            block["learning_rate"] = LEARNING_RATE_IMAGE
    if grids and (drawn := draw_validation_strip(grids, staging / VALIDATION_STRIP_IMAGE)):
        block |= {"validation_strip": VALIDATION_STRIP_IMAGE, "strip_steps": drawn}
    return block or None
