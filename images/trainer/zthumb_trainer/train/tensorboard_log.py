"""TensorBoard event files of a training run, in ``<run-dir>/logs/`` (``tensorboard --logdir``).

Only rank 0 writes (the loop opens a disabled log on the other ranks). The tags:

* every optimizer step: ``train/loss`` (averaged over the ranks, as ``progress.jsonl`` has it),
  ``train/loss_smoothed`` (an exponential moving average with weight ``SMOOTHING`` on the past,
  debiased like TensorBoard's own slider; it restarts with each pod), ``train/learning_rate`` and
  ``train/grad_norm`` (the norm ``clip_grad_norm_`` returns, before clipping);
* at each logging point (every step on a CPU, every 10 on a GPU): ``perf/steps_per_second`` since
  the previous point (validation passes left out) and ``perf/peak_memory_gib`` (the peak that
  ``status.training`` reports: CUDA's max allocated, the process's peak RSS on a CPU);
* every validation pass: its grid as the image ``validation/samples``.

A resumed pod opens the writer with ``purge_step`` = the checkpoint's step + 1: TensorBoard hides
the points the interrupted pod wrote after that checkpoint (this pod trains those steps again),
so each curve keeps one point per step. With ``spec.training.tracking.mlflow`` the same points go to
the run's MLflow run too (``tracking_mlflow.py``, which takes ``SummaryWriter``'s calls). The log is
a convenience: a writer's first error is logged, that writer dropped, and training goes on; the
writer thread flushes every two minutes, and the loop flushes at each checkpoint and at the end.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zthumb_trainer.train.measure import peak_memory

log = logging.getLogger(__name__)

LOSS = "train/loss"
LOSS_SMOOTHED = "train/loss_smoothed"
LEARNING_RATE = "train/learning_rate"
GRAD_NORM = "train/grad_norm"
STEPS_PER_SECOND = "perf/steps_per_second"
PEAK_MEMORY = "perf/peak_memory_gib"
VALIDATION_SAMPLES = "validation/samples"
HOLDOUT_LOSS = "holdout/loss"
SMOOTHING = 0.9


def open_summary_writer(logs_dir: Path, purge_step: int) -> Any:
    """torch's ``SummaryWriter`` (it needs the ``tensorboard`` package, pinned in the trainer extra)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(logs_dir), purge_step=purge_step)


class TensorBoardLog:
    """The event files of one train process (and its ``mirror``); ``logs_dir=None`` and no mirror
    (ranks other than 0) writes nothing."""

    def __init__(
        self,
        logs_dir: Path | None,
        *,
        resumed_from: int,
        device: torch.device,
        open_writer: Callable[[Path, int], Any] | None = None,  # tests: a stand-in for SummaryWriter
        mirror: Any = None,  # takes the same calls: the MLflow run (tracking_mlflow.py), or None
    ) -> None:
        self.logs_dir, self.device = logs_dir, device
        self._writers: list[tuple[str, Any]] = []  # (what the warning calls it, the writer)
        self._smoothed = 0.0
        self._smoothing_weight = 0.0  # the EMA's total weight so far, to debias it
        if logs_dir is not None:
            try:
                writer = (open_writer or open_summary_writer)(logs_dir, resumed_from + 1)
                self._writers.append((f"TensorBoard log in {logs_dir}", writer))
            except Exception as error:  # e.g. an unwritable volume: the run trains without a log
                log.warning("no TensorBoard log in %s (training goes on): %s", logs_dir, error)
        if mirror is not None:
            self._writers.append(("MLflow run", mirror))

    @property
    def active(self) -> bool:
        return bool(self._writers)

    def _write(self, action: Callable[[Any], object]) -> None:
        for name, writer in list(self._writers):
            try:
                action(writer)
            except Exception as error:
                log.warning("%s stopped after an error (training goes on): %s", name, error)
                self._writers.remove((name, writer))
                with contextlib.suppress(Exception):
                    writer.close()

    def steps(
        self,
        steps: Sequence[int],
        losses: Sequence[float],
        rates: Sequence[float],
        norms: Sequence[float | None],
    ) -> None:
        """One point per optimizer step for the loss, its smoothed curve, the LR and the grad norm."""

        points: list[tuple[str, float, int]] = []  # computed once, whatever the number of writers
        for step, loss, rate, norm in zip(steps, losses, rates, norms, strict=True):
            self._smoothed = SMOOTHING * self._smoothed + (1 - SMOOTHING) * loss
            self._smoothing_weight = SMOOTHING * self._smoothing_weight + (1 - SMOOTHING)
            points += [(LOSS, loss, step), (LOSS_SMOOTHED, self._smoothed / self._smoothing_weight, step)]
            points.append((LEARNING_RATE, rate, step))
            if norm is not None:
                points.append((GRAD_NORM, norm, step))
        self._scalars(points)

    def _scalars(self, points: Sequence[tuple[str, float, int]]) -> None:
        def write(writer: Any) -> None:
            for tag, value, step in points:
                writer.add_scalar(tag, value, step)

        self._write(write)

    def throughput(self, step: int, steps_per_second: float | None) -> None:
        if not self._writers:
            return
        points = [] if steps_per_second is None else [(STEPS_PER_SECOND, steps_per_second, step)]
        self._scalars([*points, (PEAK_MEMORY, peak_memory(self.device)[0] / 2**30, step)])

    def holdout(self, step: int, loss: float) -> None:
        """The loss on the held-out images (``holdout_loss.py``) at its step."""
        self._write(lambda writer: writer.add_scalar(HOLDOUT_LOSS, loss, step))

    def image(self, step: int, path: Path) -> None:
        """A validation grid (the PNG the pass wrote) at its step."""

        def write(writer: Any) -> None:
            with Image.open(path) as grid:
                writer.add_image(VALIDATION_SAMPLES, np.asarray(grid.convert("RGB")), step, dataformats="HWC")

        self._write(write)

    def flush(self) -> None:
        self._write(lambda writer: writer.flush())

    def close(self) -> None:
        self._write(lambda writer: writer.close())
        self._writers = []
