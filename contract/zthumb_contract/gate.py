"""The quality gate (``spec.eval.gate``): the one place that says what each threshold checks and
whether an evaluation passes.

The eval step applies it to write the verdict into its report; the operator applies it again to the
numbers it copied into ``status.evalSummary`` and acts on its own verdict (roll back, fail the run
with reason EvalGateFailed), so a trainer image that predates a check cannot wave an adapter through.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from zthumb_contract.eval_spec import EvalGateSpec
from zthumb_contract.results import EvalSummary

GATE_FAILED_REASON = "EvalGateFailed"


@dataclass(frozen=True)
class GateRule:
    threshold: str  # the EvalGateSpec field
    field: str  # the EvalSummary field it bounds
    kind: Literal["min", "max"]

    @property
    def metric(self) -> str:
        """The bounded number's name in status.evalSummary (and in the verdict's checks)."""
        return EvalSummary.model_fields[self.field].alias or self.field


# spec.eval.gate.<threshold> bounds status.evalSummary.<field>.
RULES = (
    GateRule("min_clip_i_gain", "clip_i_gain", "min"),
    GateRule("max_clip_t_drop", "clip_t_drop", "max"),
    GateRule("min_mean_pixel_difference", "mean_pixel_difference", "min"),
    GateRule("max_leakage", "leakage", "max"),
    GateRule("min_dino_gain", "dino_gain", "min"),
    GateRule("max_aesthetic_drop", "aesthetic_drop", "max"),
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


def evaluate_gate(gate: EvalGateSpec, summary: EvalSummary) -> GateVerdict | None:
    """The verdict of ``gate`` on an evaluation's compact summary; None when no threshold is set.
    A number the summary lacks (not measured, or dropped as NaN by ``EvalSummary.from_report``)
    fails its check."""
    checks = []
    for rule in RULES:
        threshold = getattr(gate, rule.threshold)
        if threshold is None:
            continue
        value: float | None = getattr(summary, rule.field)
        if value is None:
            passed = False
        elif rule.kind == "min":
            passed = value >= threshold
        else:
            passed = value <= threshold
        checks.append(GateCheck(rule.metric, rule.kind, float(threshold), value, passed))
    return GateVerdict(tuple(checks)) if checks else None
