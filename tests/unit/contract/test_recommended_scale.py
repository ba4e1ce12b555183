"""The recommended LoRA scale (zthumb_contract.scale_sweep.recommend_scale): known answers."""

from __future__ import annotations

import pytest
from zthumb_contract.eval_report import EvalReport
from zthumb_contract.eval_spec import EvalGateSpec
from zthumb_contract.scale_sweep import (
    CLIP_I,
    CLIP_T,
    IN_DISTRIBUTION,
    LEAKAGE,
    OUT_OF_DISTRIBUTION,
    PIXEL_DIFFERENCE,
    WITHOUT_TRIGGER,
    ScaleSweep,
    recommend_scale,
)

SCALES = [0.0, 0.4, 0.8, 1.2]


def _clip(clip_t: list[float], clip_i: list[float]) -> dict[str, dict[str, float]]:
    keys = ["0", "0.4", "0.8", "1.2"]
    return {CLIP_T: dict(zip(keys, clip_t, strict=True)), CLIP_I: dict(zip(keys, clip_i, strict=True))}


def _leakage(values: list[float]) -> dict[str, dict[str, float]]:
    return {LEAKAGE: dict(zip(["0", "0.4", "0.8", "1.2"], values, strict=True))}


# CLIP-I rises with the scale; CLIP-T drops 0.005, 0.015, 0.04 in distribution.
IN = _clip([0.30, 0.295, 0.285, 0.26], [0.50, 0.55, 0.60, 0.65])


def test_the_highest_gain_within_the_default_tolerances():
    # 1.2 drops CLIP-T by 0.04 > 0.02: out; 0.8 (drop 0.015, gain 0.10) beats 0.4 (gain 0.05).
    choice = recommend_scale({IN_DISTRIBUTION: IN}, SCALES)
    assert choice.scale == 0.8
    assert "CLIP-T drop <= 0.02" in choice.rule and "+0.1000" in choice.rule


def test_the_gates_thresholds_replace_the_default_tolerances():
    assert recommend_scale({IN_DISTRIBUTION: IN}, SCALES, EvalGateSpec(max_clip_t_drop=0.05)).scale == 1.2
    assert recommend_scale({IN_DISTRIBUTION: IN}, SCALES, EvalGateSpec(max_clip_t_drop=0.01)).scale == 0.4


def test_a_scale_that_hurts_the_out_of_distribution_prompts_is_out():
    # Out of distribution, 0.8 drops CLIP-T by 0.03: the largest drop over the groups counts.
    ood = _clip([0.28, 0.275, 0.25, 0.24], [0.40, 0.45, 0.50, 0.55])
    assert recommend_scale({IN_DISTRIBUTION: IN, OUT_OF_DISTRIBUTION: ood}, SCALES).scale == 0.4


def test_leakage_over_its_limit_rules_a_scale_out():
    groups = {IN_DISTRIBUTION: IN, WITHOUT_TRIGGER: _leakage([0.0, 0.05, 0.15, 0.3])}
    assert recommend_scale(groups, SCALES).scale == 0.4  # 0.8 leaks 0.15 > 0.1
    assert recommend_scale(groups, SCALES, EvalGateSpec(max_leakage=0.2)).scale == 0.8


def test_gains_average_over_the_groups_and_a_tie_goes_to_the_smaller_scale():
    flat = _clip([0.3, 0.3, 0.3, 0.3], [0.5, 0.6, 0.6, 0.6])
    assert recommend_scale({IN_DISTRIBUTION: flat}, SCALES).scale == 0.4
    # In: gain 0.1 at 0.4, 0.1 at 0.8; out: 0 at 0.4, 0.1 at 0.8: mean 0.05 vs 0.1.
    ood = _clip([0.3, 0.3, 0.3, 0.3], [0.5, 0.5, 0.6, 0.6])
    assert recommend_scale({IN_DISTRIBUTION: flat, OUT_OF_DISTRIBUTION: ood}, SCALES).scale == 0.8


def test_no_positive_gain_or_nothing_within_the_limits_recommends_nothing():
    worse = _clip([0.3, 0.3, 0.3, 0.3], [0.5, 0.49, 0.48, 0.47])
    choice = recommend_scale({IN_DISTRIBUTION: worse}, SCALES)
    assert choice.scale is None and "no scale has a positive CLIP-I gain" in choice.rule
    steep = _clip([0.3, 0.2, 0.1, 0.0], [0.5, 0.6, 0.7, 0.8])
    assert recommend_scale({IN_DISTRIBUTION: steep}, SCALES).scale is None


def test_without_clip_the_smallest_scale_that_changes_the_images():
    pixels = {IN_DISTRIBUTION: {PIXEL_DIFFERENCE: {"0": 0.0, "0.4": 1.5, "0.8": 4.0, "1.2": 9.0}}}
    choice = recommend_scale(pixels, SCALES)
    assert choice.scale == 0.8 and choice.rule.startswith("without CLIP")
    assert recommend_scale(pixels, SCALES, EvalGateSpec(min_mean_pixel_difference=1.0)).scale == 0.4
    assert recommend_scale(pixels, SCALES, EvalGateSpec(min_mean_pixel_difference=10.0)).scale is None


@pytest.mark.parametrize("scales", [[0.8], []])
def test_one_scale_has_nothing_to_compare(scales):
    assert recommend_scale({IN_DISTRIBUTION: IN}, scales).scale is None


def test_the_reference_need_not_be_zero_and_candidates_are_the_other_scales():
    groups = {
        IN_DISTRIBUTION: {CLIP_T: {"0.5": 0.3, "1": 0.29, "0": 0.3}, CLIP_I: {"0.5": 0.5, "1": 0.6, "0": 0.4}}
    }
    # Scale 0 has a lower CLIP-I than the reference 0.5: it is no candidate with a gain.
    assert recommend_scale(groups, [0.5, 1.0, 0.0]).scale == 1.0


def test_the_recommended_scale_reaches_the_compact_summary():
    sweep = ScaleSweep(reference_scale=0, scales=SCALES, groups={IN_DISTRIBUTION: IN}, recommended_scale=0.8)
    report = EvalReport(sweep=sweep)
    assert report.summary().status()["recommendedScale"] == 0.8
    assert EvalReport.from_report({"sweep": {"recommended_scale": 7}}).summary().recommended_scale is None
    assert sweep.metrics() == [CLIP_T, CLIP_I]


def test_the_out_of_distribution_prompts_are_bounded_naming_the_field():
    from pydantic import ValidationError
    from zthumb_contract.eval_spec import DEFAULT_OOD_PROMPTS, EvalSpec
    from zthumb_contract.spec import LoRAFinetuneSpec

    assert EvalSpec().out_of_distribution_prompts == DEFAULT_OOD_PROMPTS
    # A spec written before the groups: its prompts stay the in-distribution group.
    before = LoRAFinetuneSpec.model_validate({"eval": {"prompts": ["a photo of {trigger}"]}})
    assert before.eval.prompts == ["a photo of {trigger}"]
    assert EvalSpec.model_validate({"outOfDistributionPrompts": []}).out_of_distribution_prompts == []
    with pytest.raises(ValidationError, match=r"eval\.outOfDistributionPrompts\[1\]: a prompt of 1 to 1000"):
        EvalSpec.model_validate({"outOfDistributionPrompts": ["ok", " "]})
    with pytest.raises(ValidationError, match="at most 16 items"):
        EvalSpec.model_validate({"outOfDistributionPrompts": ["p"] * 17})


def test_two_scales_are_a_reference_and_one_candidate():
    groups = {IN_DISTRIBUTION: {CLIP_T: {"0": 0.3, "0.8": 0.3}, CLIP_I: {"0": 0.5, "0.8": 0.6}}}
    assert recommend_scale(groups, [0.0, 0.8]).scale == 0.8
    assert recommend_scale(groups, [0.8]).rule == "one scale only: nothing to compare it with"


def test_limits_are_inclusive():
    # Exactly representable numbers: a drop of 0.25 against a limit of 0.25 passes, and so does
    # a leakage equal to its limit; a mean pixel difference equal to the least reaches it.
    groups = {
        IN_DISTRIBUTION: {CLIP_T: {"0": 0.5, "1": 0.25}, CLIP_I: {"0": 0.5, "1": 0.75}},
        WITHOUT_TRIGGER: {LEAKAGE: {"0": 0.0, "1": 0.5}},
    }
    gate = EvalGateSpec(max_clip_t_drop=0.25, max_leakage=0.5)
    assert recommend_scale(groups, [0.0, 1.0], gate).scale == 1.0
    pixels = {IN_DISTRIBUTION: {PIXEL_DIFFERENCE: {"0": 0.0, "0.4": 2.0}}}
    assert recommend_scale(pixels, [0.0, 0.4]).scale == 0.4  # the default least is 2


def test_the_rule_names_the_mean_gain_over_the_groups():
    ood = _clip([0.3, 0.3, 0.3, 0.3], [0.5, 0.5, 0.5, 0.5])  # no gain out of distribution
    choice = recommend_scale({IN_DISTRIBUTION: IN, OUT_OF_DISTRIBUTION: ood}, SCALES)
    # In: +0.05 at 0.4, +0.10 at 0.8; out: 0: the means are 0.025 and 0.05.
    assert choice.scale == 0.8 and "(+0.0500)" in choice.rule


def test_a_scale_missing_from_the_clip_numbers_is_skipped_not_the_end():
    groups = {IN_DISTRIBUTION: {CLIP_T: {"0": 0.3, "0.4": 0.3, "0.8": 0.3}, CLIP_I: {"0": 0.5, "0.8": 0.6}}}
    assert recommend_scale(groups, [0.0, 0.4, 0.8]).scale == 0.8


@pytest.mark.parametrize(
    "groups",
    [
        {},
        {OUT_OF_DISTRIBUTION: {PIXEL_DIFFERENCE: {"0": 0.0, "0.4": 9.0}}},
        {IN_DISTRIBUTION: {CLIP_T: {"0": 0.3, "0.4": 0.3}}},  # CLIP-T without CLIP-I: no CLIP rule
        {IN_DISTRIBUTION: {CLIP_I: {"0": 0.3, "0.4": 0.4}}},
    ],
    ids=["nothing", "pixels-out-of-distribution-only", "clip-t-only", "clip-i-only"],
)
def test_without_the_numbers_a_rule_needs_nothing_is_recommended(groups):
    choice = recommend_scale(groups, [0.0, 0.4])
    assert choice == type(choice)(None, "without CLIP: no scale reaches a mean pixel difference of 2")


def test_a_scale_over_a_limit_does_not_end_the_search():
    # 0.4 leaks too much; 0.8, further on, is within every limit and gains.
    groups = {
        IN_DISTRIBUTION: {
            CLIP_T: {"0": 0.3, "0.4": 0.3, "0.8": 0.3},
            CLIP_I: {"0": 0.5, "0.4": 0.6, "0.8": 0.6},
        },
        WITHOUT_TRIGGER: {LEAKAGE: {"0": 0.0, "0.4": 0.5, "0.8": 0.05}},
    }
    assert recommend_scale(groups, [0.0, 0.4, 0.8]).scale == 0.8
