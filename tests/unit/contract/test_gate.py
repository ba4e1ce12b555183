"""spec.eval.gate: the spec, the CRD's rules and the verdict (zthumb_contract.gate)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from zthumb_contract.eval_spec import EvalGateSpec
from zthumb_contract.gate import RULES, evaluate_gate
from zthumb_contract.results import EvalSummary
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.steps import RunPaths, eval_step


def test_no_threshold_means_no_gate() -> None:
    assert not EvalGateSpec().active
    assert evaluate_gate(EvalGateSpec(), EvalSummary(clip_i_gain=-1)) is None


@pytest.mark.parametrize(
    ("gate", "summary", "passed"),
    [
        ({"minClipIGain": 0.02}, {"clipIGain": 0.02}, True),  # the threshold itself passes
        ({"minClipIGain": 0.02}, {"clipIGain": 0.0199}, False),
        ({"maxClipTDrop": 0.05}, {"clipTDrop": 0.05}, True),
        ({"maxClipTDrop": 0.05}, {"clipTDrop": 0.06}, False),
        ({"minMeanPixelDifference": 1}, {"meanPixelDifference": 0.5}, False),
        ({"minClipIGain": -0.5}, {}, False),  # not measured
        ({"minClipIGain": 0.0}, {"clipIGain": float("nan")}, False),
        ({"minClipIGain": 0.0}, {"clipIGain": True}, False),  # not a number
        ({"maxLeakage": 0.1}, {"leakage": 0.1}, True),
        ({"maxLeakage": 0.1}, {"leakage": 0.1001}, False),
        ({"maxLeakage": 0.1}, {"clipIGain": 0.5}, False),  # not measured (no leakage prompts, no CLIP)
        ({"minDinoGain": 0.05}, {"dinoGain": 0.05}, True),
        ({"minDinoGain": 0.05}, {"dinoGain": 0.0499}, False),
        ({"minDinoGain": 0.05}, {"clipIGain": 0.5}, False),  # not measured (DINO off)
        ({"maxAestheticDrop": 0.5}, {"aestheticDrop": 0.5}, True),
        ({"maxAestheticDrop": 0.5}, {"aestheticDrop": 0.51}, False),
        ({"maxAestheticDrop": 0.5}, {"aestheticDrop": float("inf")}, False),  # dropped: not measured
    ],
)
def test_each_check(gate: dict[str, float], summary: dict[str, object], passed: bool) -> None:
    verdict = evaluate_gate(
        EvalGateSpec.model_validate(gate), EvalSummary.from_report(summary) or EvalSummary()
    )
    assert verdict is not None
    assert verdict.passed is passed
    assert verdict.message.startswith("passed: " if passed else "failed: ")


def test_the_message_names_the_failed_checks_with_values_and_thresholds() -> None:
    gate = EvalGateSpec(min_clip_i_gain=0.02, max_clip_t_drop=0.05, min_mean_pixel_difference=1)
    verdict = evaluate_gate(gate, EvalSummary(clip_i_gain=0.001, clip_t_drop=0.01, mean_pixel_difference=0.2))
    assert verdict is not None
    assert verdict.message == "failed: clipIGain 0.001 < min 0.02; meanPixelDifference 0.2 < min 1"
    assert verdict.status()["checks"][1] == {
        "metric": "clipTDrop", "kind": "max", "threshold": 0.05, "value": 0.01, "passed": True
    }  # fmt: skip


def test_every_rule_names_a_field_of_the_gate_spec() -> None:
    assert {rule.threshold for rule in RULES} == set(EvalGateSpec.model_fields)


@pytest.mark.parametrize("field", ["minClipIGain", "maxClipTDrop"])
def test_thresholds_out_of_range_are_refused_naming_the_field(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        LoRAFinetuneSpec.model_validate({"eval": {"gate": {field: 3}}})


def test_a_gate_needs_a_deployed_evaluation() -> None:
    with pytest.raises(ValidationError, match=r"eval\.gate needs eval\.enabled and deploy\.enabled"):
        LoRAFinetuneSpec.model_validate({"deploy": {"enabled": False}, "eval": {"gate": {"minClipIGain": 0}}})
    LoRAFinetuneSpec.model_validate({"deploy": {"enabled": False}})  # no gate: fine


def test_the_gate_reaches_the_eval_step_as_one_json_option() -> None:
    spec = LoRAFinetuneSpec.model_validate({"eval": {"gate": {"maxClipTDrop": 0.05}}})
    args = eval_step(RunPaths("/data", "r", spec), "http://s").args
    gate = args[args.index("--gate") + 1]
    assert gate == (
        '{"minClipIGain":null,"maxClipTDrop":0.05,"minMeanPixelDifference":null,"maxLeakage":null,'
        '"minDinoGain":null,"maxAestheticDrop":null}'
    )
    assert "--gate" not in eval_step(RunPaths("/data", "r", LoRAFinetuneSpec()), "http://s").args


def test_the_gate_s_clip_checks_need_clip() -> None:
    with pytest.raises(ValidationError, match=r"minClipIGain and maxClipTDrop need eval\.clip\.enabled"):
        LoRAFinetuneSpec.model_validate({"eval": {"clip": {"enabled": False}, "gate": {"maxClipTDrop": 0.1}}})
    LoRAFinetuneSpec.model_validate(
        {"eval": {"clip": {"enabled": False}, "gate": {"minMeanPixelDifference": 1}}}
    )


def test_the_eval_step_gets_the_served_scale_and_the_clip_paths() -> None:
    spec = LoRAFinetuneSpec.model_validate(
        {"deploy": {"loraScale": 0.6}, "eval": {"clip": {"tokenSecretRef": {"name": "hf"}}}}
    )
    step = eval_step(RunPaths("/data", "r", spec), "http://s")
    args = step.args
    assert args[args.index("--served-scale") + 1] == "0.6"
    assert args[args.index("--clip-model") + 1] == "/data/models/clip-vit-large-patch14.safetensors"
    assert args[args.index("--clip-config") + 1] == "/data/models/clip-vit-large-patch14-config"
    assert json.loads(args[args.index("--clip") + 1])["tokenSecretRef"] == {"name": "hf", "key": "token"}
    assert step.secret_env["HF_TOKEN"].name == "hf"  # the token from the Secret, never in the args
    assert "--clip" not in eval_step(RunPaths("/data", "r", LoRAFinetuneSpec()), "http://s").args
