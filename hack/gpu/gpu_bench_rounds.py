"""Interleaved rounds for the GPU benchmark: every variant timed in the same rounds.

A GPU run drifts within one process (the same eager SDXL base measured 2.30 s and 3.04 s minutes
apart on a launch-bound virtual machine), so a ratio of two blocks timed one after another says as
much about the drift as about the variants. Here each round runs every variant once, the order
rotated by one per round (none is always first, none always follows the same one), and a ratio is
taken from the medians of the same rounds; the per-round ratios show its spread.

``Rounds`` only schedules and records; each section runs its own variants (a request, a batch of
concurrent requests) in the order ``Rounds`` gives and records what it timed.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))  # bench_stats (hack/lib)
from bench_stats import percentile


class Rounds:
    """``warmup`` untimed rounds, then ``rounds`` recorded ones, every variant once per round."""

    def __init__(self, names: Sequence[str], rounds: int, warmup: int = 1) -> None:
        if not names or rounds < 1 or warmup < 0:
            raise ValueError("Rounds needs at least one variant and one round")
        self.names = list(names)
        self.rounds = rounds
        self.warmup = warmup
        self.samples: dict[str, list[float]] = {name: [] for name in self.names}
        self.order: list[str] = []  # the recorded rounds' variants in the order they ran

    def __iter__(self) -> Iterator[tuple[int, str, bool]]:
        """(round, variant, recorded): round r runs the variants rotated by r."""
        count = len(self.names)
        for index in range(self.warmup + self.rounds):
            recorded = index >= self.warmup
            for offset in range(count):
                name = self.names[(index + offset) % count]
                if recorded:
                    self.order.append(name)
                yield index, name, recorded

    def record(self, name: str, seconds: float) -> None:
        self.samples[name].append(seconds)

    def median(self, name: str) -> float:
        values = self.samples[name]
        return statistics.median(values) if values else float("nan")

    def p90(self, name: str) -> float:
        return percentile(self.samples[name], 90)

    def ratio(self, name: str, base: str) -> float:
        """Median over median, both from the same rounds."""
        return self.median(name) / self.median(base)

    def round_ratios(self, name: str, base: str) -> list[float]:
        """The ratio in each round (variant and base one sample per round, paired by round)."""
        return [a / b for a, b in zip(self.samples[name], self.samples[base], strict=False) if b > 0]

    def summary(self, name: str, base: str | None = None) -> dict[str, Any]:
        """The row a section records: samples, median, p90 and, against ``base``, the ratios."""
        row: dict[str, Any] = {
            "samples": len(self.samples[name]),
            "median_s": round(self.median(name), 4),
            "p90_s": round(self.p90(name), 4),
        }
        if base is not None and name != base:
            per_round = self.round_ratios(name, base)
            row["over_base"] = round(self.ratio(name, base), 3)
            row["round_ratio_min_max"] = f"{min(per_round):.3f}-{max(per_round):.3f}" if per_round else "n/a"
        return row

    def table(self, title: str, base: str | None = None) -> str:
        """A markdown table like hack/bench/bench_server.py's: one line per variant, ratios over ``base``."""
        header = (
            f"{title}: {self.rounds} interleaved rounds (+{self.warmup} warm-up), order rotated per round"
        )
        lines = [
            header,
            "",
            f"| variant | n | median s | p90 s | over {base or 'base'} (medians) | per-round ratio min-max |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name in self.names:
            row = self.summary(name, base)
            lines.append(
                f"| {name} | {row['samples']} | {row['median_s']:.4f} | {row['p90_s']:.4f} | "
                f"{row.get('over_base', '-')} | {row.get('round_ratio_min_max', '-')} |"
            )
        return "\n".join(lines)
