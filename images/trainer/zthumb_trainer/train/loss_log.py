"""The losses of one training session: kept on the device until a logging point, then read back
for every rank in one host synchronisation, averaged over the ranks, and written to
``progress.jsonl`` and the run's status (rank 0) and to the progress bar."""

from __future__ import annotations

import time
from typing import Any

import torch

from zthumb_trainer.reporting import ProgressLog, StatusReporter


class LossLog:
    def __init__(
        self,
        accelerator: Any,
        total_steps: int,
        progress_log: ProgressLog | None,
        reporter: StatusReporter | None,
        bar: Any,
    ) -> None:
        self.accelerator, self.total_steps = accelerator, total_steps
        self.progress_log, self.reporter, self.bar = progress_log, reporter, bar
        self.losses: list[float] = []
        # (step, loss on the device, learning rate): read back together at the next logging point.
        self.pending: list[tuple[int, torch.Tensor, float]] = []
        self.steps = 0  # this session's
        self.started = time.monotonic()

    def add(self, step: int, loss: torch.Tensor, learning_rate: float) -> None:
        self.pending.append((step, loss, learning_rate))
        self.steps += 1
        self.bar.update(1)

    @property
    def mean(self) -> float | None:
        return sum(self.losses) / len(self.losses) if self.losses else None

    def flush(self) -> float:
        """Read the pending losses (a collective: every rank calls it at the same step), log them,
        report progress; the last loss."""
        stacked = torch.stack([loss for _, loss, _ in self.pending])
        count = self.accelerator.num_processes
        values = self.accelerator.gather(stacked).reshape(count, -1).mean(dim=0).tolist()
        now = time.time()
        per_step = (time.monotonic() - self.started) / self.steps
        for (step, _, lr), value in zip(self.pending, values, strict=True):
            self.losses.append(value)
            if self.progress_log:
                self.progress_log.append(
                    {
                        "step": step,
                        "total_steps": self.total_steps,
                        "loss": value,
                        "lr": lr,
                        "eta_seconds": round(per_step * (self.total_steps - step), 1),
                        "time": now,
                    }
                )
        last_step = self.pending[-1][0]
        self.pending.clear()
        self.bar.set_postfix(loss=f"{values[-1]:.4f}")
        if self.reporter:
            eta = per_step * (self.total_steps - last_step)
            self.reporter.report(
                last_step, self.total_steps, values[-1], eta, force=last_step == self.total_steps
            )
        return float(values[-1])
