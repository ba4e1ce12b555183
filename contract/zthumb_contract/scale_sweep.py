"""The LoRA scale sweep of an evaluation: every per-scale metric of every prompt group, and the scale
the evaluation recommends serving (``recommend_scale``: the one place that says how it is chosen).

The eval step renders its prompt groups at each of ``spec.eval.scales`` with the same seeds:

* ``in_distribution``: ``spec.eval.prompts``, prompts like the training captions;
* ``out_of_distribution``: ``spec.eval.outOfDistributionPrompts``, the subject in new contexts
  (where an adapter that overrides the prompt shows it first);
* ``without_trigger``: ``spec.eval.leakagePrompts`` (no trigger word): their leakage per scale.

``ScaleSweep.groups`` holds ``group -> metric -> {scale: mean}``; a metric the eval adds later
(one more key per sample) appears in it, in the report's tables and in its chart without a change
here. The recommendation reads only the metrics it names below.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from zthumb_contract.eval_spec import EvalGateSpec
from zthumb_contract.results import Results

IN_DISTRIBUTION = "in_distribution"
OUT_OF_DISTRIBUTION = "out_of_distribution"
WITHOUT_TRIGGER = "without_trigger"
PROMPT_GROUPS = (IN_DISTRIBUTION, OUT_OF_DISTRIBUTION)
GROUP_TITLES = {
    IN_DISTRIBUTION: "in-distribution prompts",
    OUT_OF_DISTRIBUTION: "out-of-distribution prompts",
    WITHOUT_TRIGGER: "prompts without the trigger",
}

PIXEL_DIFFERENCE = "pixel_difference"
CLIP_T = "clip_t"
CLIP_I = "clip_i"
LEAKAGE = "leakage"
DINO = "dino"
AESTHETIC = "aesthetic"
# How the report names a metric; a metric missing here is shown by its key.
METRIC_TITLES = {
    PIXEL_DIFFERENCE: "mean pixel difference vs reference (0–255)",
    CLIP_T: "CLIP-T (image–prompt cosine)",
    CLIP_I: "CLIP-I (cosine to the training images)",
    LEAKAGE: "leakage (1 − CLIP image similarity to scale 0)",
    DINO: "DINO (cosine to the training images)",
    AESTHETIC: "aesthetic score (LAION predictor, about 1–10)",
}

# The tolerances of the recommendation where spec.eval.gate sets no threshold of its own: a CLIP-T
# drop of 0.02 (cosine) is about the spread between seeds of one prompt; a leakage of 0.1 is where
# the gate's documentation puts "a small adapter-induced change"; a pixel difference of 2 (of 255)
# is the least the demo's own gate asks of an adapter that changed something.
DEFAULT_MAX_CLIP_T_DROP = 0.02
DEFAULT_MAX_LEAKAGE = 0.1
DEFAULT_MIN_PIXEL_DIFFERENCE = 2.0
_EPSILON = 1e-9  # the numbers are rounded to 4 decimals: a tie stays a tie

# A number per LoRA scale, keyed by the scale as ``f"{scale:g}"`` ("0", "0.8").
ByScale = dict[str, float]


def scale_key(scale: float) -> str:
    return f"{scale:g}"


class ScaleSweep(Results):
    """The report's ``sweep`` block (``summary.json``)."""

    reference_scale: float = 0.0
    scales: list[float] = Field(default_factory=list)
    groups: dict[str, dict[str, ByScale]] = Field(default_factory=dict)  # group -> metric -> by scale
    recommended_scale: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    rule: str = ""  # which rule chose it (or why none), in words
    chart: str | None = None  # curves/scales.png, relative to the report

    def metrics(self) -> list[str]:
        """Every metric of any group, in the order first met."""
        return list(dict.fromkeys(metric for by_metric in self.groups.values() for metric in by_metric))


@dataclass(frozen=True)
class Recommendation:
    scale: float | None  # None: no scale met the rule
    rule: str


def recommend_scale(
    groups: dict[str, dict[str, ByScale]], scales: list[float], gate: EvalGateSpec | None = None
) -> Recommendation:
    """The scale to serve, from the sweep (``groups``) over ``scales`` (the first is the reference).

    With CLIP (CLIP-T and CLIP-I per scale in a prompt group): among the scales other than the
    reference whose CLIP-T drop against the reference (the largest over the prompt groups, so a
    scale that hurts the subject in new contexts is out) is at most the gate's ``maxClipTDrop``
    (else ``DEFAULT_MAX_CLIP_T_DROP``) and whose leakage, where measured, is at most the gate's
    ``maxLeakage`` (else ``DEFAULT_MAX_LEAKAGE``), the one with the highest CLIP-I gain (the mean
    over the prompt groups), which must be positive; a tie goes to the smaller scale.

    Without CLIP: the smallest scale other than the reference whose in-distribution mean pixel
    difference reaches the gate's ``minMeanPixelDifference`` (else ``DEFAULT_MIN_PIXEL_DIFFERENCE``):
    the gentlest scale that visibly changes the subject (pixels cannot say whether it helps).
    """
    if len(scales) < 2:
        return Recommendation(None, "one scale only: nothing to compare it with")
    reference, candidates = scale_key(scales[0]), sorted(set(scales[1:]) - {scales[0]})
    gate = gate or EvalGateSpec()
    prompt_groups = [groups[name] for name in PROMPT_GROUPS if name in groups]
    with_clip = [
        group
        for group in prompt_groups
        if reference in group.get(CLIP_T, {}) and reference in group.get(CLIP_I, {})
    ]
    if with_clip:
        return _by_clip(
            with_clip, groups.get(WITHOUT_TRIGGER, {}).get(LEAKAGE, {}), reference, candidates, gate
        )
    return _by_pixels(groups.get(IN_DISTRIBUTION, {}).get(PIXEL_DIFFERENCE, {}), candidates, gate)


def _by_clip(
    groups: list[dict[str, ByScale]],
    leakage: ByScale,
    reference: str,
    candidates: list[float],
    gate: EvalGateSpec,
) -> Recommendation:
    max_drop = gate.max_clip_t_drop if gate.max_clip_t_drop is not None else DEFAULT_MAX_CLIP_T_DROP
    max_leakage = gate.max_leakage if gate.max_leakage is not None else DEFAULT_MAX_LEAKAGE
    limits = f"CLIP-T drop <= {max_drop:g} in every prompt group and leakage <= {max_leakage:g}"
    best: tuple[float, float] | None = None  # (gain, scale)
    for scale in candidates:
        key = scale_key(scale)
        measured = [group for group in groups if key in group[CLIP_T] and key in group[CLIP_I]]
        if not measured:
            continue
        drop = max(group[CLIP_T][reference] - group[CLIP_T][key] for group in measured)
        gain = sum(group[CLIP_I][key] - group[CLIP_I][reference] for group in measured) / len(measured)
        if drop > max_drop + _EPSILON or leakage.get(key, 0.0) > max_leakage + _EPSILON:
            continue
        if gain > _EPSILON and (best is None or gain > best[0] + _EPSILON):
            best = (gain, scale)
    if best is None:
        return Recommendation(None, f"no scale has a positive CLIP-I gain with {limits}")
    return Recommendation(best[1], f"the highest CLIP-I gain ({best[0]:+.4f}) with {limits}")


def _by_pixels(differences: ByScale, candidates: list[float], gate: EvalGateSpec) -> Recommendation:
    least = gate.min_mean_pixel_difference
    least = least if least is not None else DEFAULT_MIN_PIXEL_DIFFERENCE
    for scale in candidates:
        value = differences.get(scale_key(scale))
        if value is not None and value >= least - _EPSILON:
            return Recommendation(
                scale, f"without CLIP: the smallest scale whose mean pixel difference reaches {least:g}"
            )
    return Recommendation(None, f"without CLIP: no scale reaches a mean pixel difference of {least:g}")
