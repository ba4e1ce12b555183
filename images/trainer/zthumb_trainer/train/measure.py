"""What the train step measures about itself: steady-state steps/s and peak memory.

The numbers travel as the ``training`` block of the train summary, already in the shape of the
LoRAFinetune's ``status.training`` (the operator copies it from the termination message), and
the eval report shows them (read from the run's ``summary.json``).

* ``stepsPerSecond`` leaves the first step of the pod out: it carries the warm-up (cuDNN/kernel
  selection, allocator growth) and, with ``compile``, the compilation, which would make a short
  run look several times slower than it trains. Fewer than two steps: no steady state, None.
* ``estimatedRemainingSeconds`` (``status.progress``, ``StepRate``) divides the steps left by the
  rate over the last ``RATE_WINDOW_STEPS`` steps (or all since the warm-up, when fewer), measured
  between logging points (where the host has waited for the device) from the end of the pod's
  ``WARMUP_STEPS``-th step, validation passes left out. None until one logging point after
  the warm-up follows another; 0 at the last step.
* ``peakMemoryBytes`` is ``torch.cuda.max_memory_allocated`` on a GPU (the tensors' peak, what
  decides an out-of-memory) and the process's peak resident set size on a CPU, where the
  model's tensors are ordinary process memory; ``memoryKind`` says which.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from zthumb_contract.results import CUDA_MAX_ALLOCATED, PROCESS_MAX_RSS, TrainResults


def process_peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports kilobytes, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class StepClock:
    """Times a pod's optimizer steps after its first one."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.steps = 0
        self._after_first: float | None = None
        self._last: float | None = None
        self._excluded = 0.0  # seconds between steps that were not training (validation samples)

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` spent between two steps out of the steady state."""
        if self._after_first is not None:
            self._excluded += seconds

    def step_done(self) -> None:
        self.steps += 1
        if self.steps == 1:
            # One synchronisation, once: without it the first step's queued GPU work would be
            # counted in the steady state (a GPU step only enqueues kernels).
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self._after_first = time.monotonic()

    def finish(self) -> None:
        """At the end of training, after the last loss was read back (the GPU work is done)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._last = time.monotonic()

    @property
    def steps_per_second(self) -> float | None:
        if self.steps < 2 or self._after_first is None or self._last is None:
            return None
        elapsed = self._last - self._after_first - self._excluded
        return round((self.steps - 1) / elapsed, 4) if elapsed > 0 else None


WARMUP_STEPS = 2  # a pod's first steps: compilation, CUDA-graph recording, kernel selection
RATE_WINDOW_STEPS = 50  # long enough to even out the logging points, short enough to follow a change


def estimate_remaining_seconds(
    points: list[tuple[int, float]], total_steps: int, *, warmup_until: int, window: int = RATE_WINDOW_STEPS
) -> float | None:
    """Seconds left at the steady-state rate; ``points`` are (step, seconds) at logging points in
    step order, ``warmup_until`` the step whose end starts the steady state."""
    if points and points[-1][0] >= total_steps:
        return 0.0
    steady = [point for point in points if point[0] >= warmup_until]
    if len(steady) < 2:
        return None
    last_step, last_time = steady[-1]
    # The newest point at least ``window`` steps back, else the oldest steady one.
    first_step, first_time = next(
        (point for point in reversed(steady) if point[0] <= last_step - window), steady[0]
    )
    if last_time <= first_time or last_step <= first_step:
        return None
    return (total_steps - last_step) * (last_time - first_time) / (last_step - first_step)


class StepRate:
    """The logging points of one pod, for the remaining time and the recent steps/s."""

    def __init__(self, first_step: int) -> None:
        self.warmup_until = first_step + WARMUP_STEPS
        self.points: list[tuple[int, float]] = []
        self._excluded = 0.0

    def exclude(self, seconds: float) -> None:
        """Leave time that was not training (a validation pass) out of the rate."""
        self._excluded += seconds

    def mark(self, step: int) -> None:
        self.points.append((step, time.monotonic() - self._excluded))
        del self.points[: -(RATE_WINDOW_STEPS + 2)]  # bounded: a point per step at most

    def remaining_seconds(self, total_steps: int) -> float | None:
        return estimate_remaining_seconds(self.points, total_steps, warmup_until=self.warmup_until)

    @property
    def recent_steps_per_second(self) -> float | None:
        """Between the last two logging points, once both are past the warm-up."""
        if len(self.points) < 2 or self.points[-2][0] < self.warmup_until:
            return None
        (step_a, time_a), (step_b, time_b) = self.points[-2:]
        return (step_b - step_a) / (time_b - time_a) if time_b > time_a else None


def peak_memory(device: torch.device, setup_peak_bytes: int = 0) -> tuple[int, str]:
    """(bytes, kind) of this process's peak memory on ``device`` over the whole run."""
    if device.type == "cuda":
        return max(setup_peak_bytes, int(torch.cuda.max_memory_allocated(device))), CUDA_MAX_ALLOCATED
    return process_peak_rss_bytes(), PROCESS_MAX_RSS


def training_block(
    clock: StepClock, device: torch.device, setup_peak_bytes: int, final_loss: Any
) -> dict[str, Any]:
    """The summary's ``training`` block: ``status.training`` (``zthumb_contract.results``)."""
    peak, kind = peak_memory(device, setup_peak_bytes)
    raw = {
        "stepsPerSecond": clock.steps_per_second,
        "peakMemoryBytes": peak,
        "memoryKind": kind,
        "device": str(device),
        "finalLoss": final_loss,
    }
    # Through the model the operator reads it with: a value it would refuse (a NaN loss) is left out.
    results = TrainResults.from_report(raw)
    return results.status() if results is not None else {}


def read_training_block(summary_json: Path | None) -> dict[str, Any] | None:
    """The ``training`` block of a train ``summary.json``; None when there is none to read."""
    if summary_json is None:
        return None
    try:
        block = json.loads(summary_json.read_text()).get("training")
    except (OSError, ValueError, AttributeError):
        return None
    return block if isinstance(block, dict) else None


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    return f"{count:.2f} GiB"  # pragma: no cover - the loop always returns


def training_markdown(block: dict[str, Any] | None) -> str:
    """One report line for the training numbers."""
    if not block:
        return "- Training: no numbers (the train step's summary.json was not found)"
    rate = block.get("stepsPerSecond")
    peak = block.get("peakMemoryBytes")
    memory = (
        f"{format_bytes(peak)} ({block.get('memoryKind')})" if isinstance(peak, int | float) else "unknown"
    )
    steps = f"{rate} steps/s (steady state)" if rate is not None else "steps/s unknown (under two steps)"
    return f"- Training on `{block.get('device')}`: {steps}, peak memory {memory}"
