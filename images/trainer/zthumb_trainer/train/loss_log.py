"""The losses of one training session: kept on the device until a logging point, then read back
for every rank in one host synchronisation, averaged over the ranks, and written to
``progress.jsonl``, the TensorBoard log and the run's status (rank 0) and to the progress bar."""

from __future__ import annotations

import time
from typing import Any

import torch

from zthumb_trainer.reporting import ProgressLog, StatusReporter
from zthumb_trainer.train.measure import StepRate
from zthumb_trainer.train.tensorboard_log import TensorBoardLog


class LossLog:
    def __init__(  # noqa: PLR0917 - the places one logging point writes to
        self,
        accelerator: Any,
        total_steps: int,
        progress_log: ProgressLog | None,
        reporter: StatusReporter | None,
        bar: Any,
        tensorboard: TensorBoardLog,
        first_step: int,
    ) -> None:
        self.accelerator, self.total_steps = accelerator, total_steps
        self.progress_log, self.reporter, self.bar = progress_log, reporter, bar
        self.tensorboard = tensorboard
        self.rate = StepRate(first_step)
        self.losses: list[float] = []
        # (step, loss on the device, learning rate, grad norm on the device or None): read back
        # together at the next logging point.
        self.pending: list[tuple[int, torch.Tensor, float, torch.Tensor | None]] = []
        self.steps = 0  # this session's
        self.started = time.monotonic()

    def add(
        self, step: int, loss: torch.Tensor, learning_rate: float, grad_norm: torch.Tensor | None
    ) -> None:
        self.pending.append((step, loss, learning_rate, grad_norm))
        self.steps += 1
        self.bar.update(1)

    @property
    def mean(self) -> float | None:
        return sum(self.losses) / len(self.losses) if self.losses else None

    def flush(self) -> float:
        """Read the pending losses (a collective: every rank calls it at the same step), log them,
        report progress; the last loss."""
        stacked = torch.stack([loss for _, loss, _, _ in self.pending])
        count = self.accelerator.num_processes
        values = self.accelerator.gather(stacked).reshape(count, -1).mean(dim=0).tolist()
        steps = [step for step, _, _, _ in self.pending]
        last_step = steps[-1]
        self.rate.mark(last_step)
        remaining = self.rate.remaining_seconds(self.total_steps)
        now = time.time()
        for (step, _, lr, _), value in zip(self.pending, values, strict=True):
            self.losses.append(value)
            if self.progress_log:
                self.progress_log.append(
                    {
                        "step": step,
                        "total_steps": self.total_steps,
                        "loss": value,
                        "lr": lr,
                        "eta_seconds": None if remaining is None else round(remaining, 1),
                        "time": now,
                    }
                )
        if self.tensorboard.active:
            self._tensorboard(steps, values)
        self.pending.clear()
        self.bar.set_postfix(loss=f"{values[-1]:.4f}")
        if self.reporter:
            self.reporter.report(
                last_step, self.total_steps, values[-1], remaining, force=last_step == self.total_steps
            )
        return float(values[-1])

    def _tensorboard(self, steps: list[int], losses: list[float]) -> None:
        rates = [lr for _, _, lr, _ in self.pending]
        norms: list[float | None] = [None] * len(steps)
        measured = [(i, norm) for i, (_, _, _, norm) in enumerate(self.pending) if norm is not None]
        if measured:  # one read-back for all of them
            values = torch.stack([norm.float() for _, norm in measured]).tolist()
            for (i, _), value in zip(measured, values, strict=True):
                norms[i] = value
        self.tensorboard.steps(steps, losses, rates, norms)
        self.tensorboard.throughput(steps[-1], self.rate.recent_steps_per_second)
