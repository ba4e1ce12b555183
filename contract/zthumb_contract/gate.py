"""The quality gate (``spec.eval.gate``): the one place that says what each threshold checks and
whether an evaluation passes.

The eval step applies it to write the verdict into its report; the operator applies it again to the
numbers it copied into ``status.evalSummary`` and acts on its own verdict (roll back, fail the run
with reason EvalGateFailed), so a trainer image that predates a check cannot wave an adapter through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from zthumb_contract.spec import EvalGateSpec

GATE_FAILED_REASON = "EvalGateFailed"


@dataclass(frozen=True)
class GateRule:
    threshold: str  # the EvalGateSpec field
    metric: str  # the key of the evaluation's compact summary (status.evalSummary)
    kind: Literal["min", "max"]


# spec.eval.gate.<camel(threshold)> bounds status.evalSummary.<metric>.
RULES = (
    GateRule("min_clip_i_gain", "clipIGain", "min"),
    GateRule("max_clip_t_drop", "clipTDrop", "max"),
    GateRule("min_mean_pixel_difference", "meanPixelDifference", "min"),
)


@dataclass(frozen=True)
class GateCheck:
    metric: str
    kind: Literal["min", "max"]
    threshold: float
    value: float | None  # None: the evaluation did not measure it, which fails the check
    passed: bool

    def describe(self) -> str:
        if self.value is None:
            return f"{self.metric} was not measured (needed for {self.kind} {self.threshold:g})"
        relation = {("min", True): ">=", ("min", False): "<", ("max", True): "<=", ("max", False): ">"}
        compared = relation[self.kind, self.passed]
        return f"{self.metric} {self.value:.4g} {compared} {self.kind} {self.threshold:g}"


@dataclass(frozen=True)
class GateVerdict:
    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def message(self) -> str:
        failed = [check for check in self.checks if not check.passed]
        shown = failed or list(self.checks)
        return ("failed: " if failed else "passed: ") + "; ".join(check.describe() for check in shown)

    def status(self) -> dict[str, Any]:
        """``status.evalGate`` (and the eval summary's ``gate`` block)."""
        checks = [{k: v for k, v in asdict(check).items() if v is not None} for check in self.checks]
        return {"passed": self.passed, "message": self.message, "checks": checks}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)  # NaN is not a measurement


def evaluate_gate(gate: EvalGateSpec, summary: Mapping[str, Any]) -> GateVerdict | None:
    """The verdict of ``gate`` on an evaluation's compact summary; None when no threshold is set."""
    checks = []
    for rule in RULES:
        threshold = getattr(gate, rule.threshold)
        if threshold is None:
            continue
        value = _number(summary.get(rule.metric))
        if value is None:
            passed = False
        elif rule.kind == "min":
            passed = value >= threshold
        else:
            passed = value <= threshold
        checks.append(GateCheck(rule.metric, rule.kind, float(threshold), value, passed))
    return GateVerdict(tuple(checks)) if checks else None
